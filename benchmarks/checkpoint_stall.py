"""The async-save stall: step time on checkpoint steps against the others (AST tiny, one CPU device).

  python benchmarks/checkpoint_stall.py --dataset data/synth_speech/1.0.0

A save is issued right after step n is dispatched; with metrics fetched one step late, the stall shows
in the step time logged for step n + 1.
"""

import argparse
import json
import os
import tempfile

import numpy as np

from jaxspeech.train import trainer


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dataset", default="data/synth_speech/1.0.0")
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--every", type=int, default=5)
  args = parser.parse_args()
  import importlib.util
  spec = importlib.util.spec_from_file_location("ast_config", os.path.join(os.path.dirname(__file__), "..",
                                                                            "configs", "ast.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config("tiny")
  cfg.data.path = args.dataset
  cfg.train.update(steps=args.steps, log_every=1, eval_every=0, checkpoint_every=args.every, best_metric="")
  with tempfile.TemporaryDirectory() as workdir:
    trainer.Trainer(cfg, workdir).train()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      times = {m["step"]: m["step_time"] for m in map(json.loads, f) if "step_time" in m}
  warm = {s: t for s, t in times.items() if s > 2 * args.every}  # past compilation and the first saves
  after_save = [t for s, t in warm.items() if (s - 1) % args.every == 0]
  others = [t for s, t in warm.items() if (s - 1) % args.every]
  print(f"| steps after a save | {np.median(after_save) * 1e3:.1f} ms (median of {len(after_save)}) |")
  print(f"| other steps | {np.median(others) * 1e3:.1f} ms (median of {len(others)}) |")
  print(f"| stall per save | {(np.median(after_save) - np.median(others)) * 1e3:.1f} ms |")


if __name__ == "__main__":
  main()
