"""Overhead of the local pod simulation: 2 processes × 4 fake devices against 1 process × 8, same global batch.

    .venv/bin/python benchmarks/multihost_overhead.py [--steps 30] [--rounds 2] [--write] \\
        [--dataset data/synth_speech/1.0.0]

Each side runs this script in `--worker` mode: the trainer's train step for `configs/ast.py:tiny` (global
batch 32, mesh data=8), its state created in place and every host feeding its share of each global batch
from the AST pipeline (`jax.make_array_from_process_local_data`), as `jaxspeech train` does. The 2-process
side is started by `launch/local.py` and joined by jax.distributed over gloo on 127.0.0.1. A step is timed
from its batch being taken to its loss being ready; `--skip` steps (compilation, warm-up) come first and
are not timed. Rounds alternate the two sides so machine noise hits both. Prints markdown; `--write`
replaces this script's section of benchmarks/RESULTS.md and leaves the others alone.
"""

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import common

SECTION = "Multi-host simulation overhead (issue #8)"
VERSIONS = ("jax", "jaxlib", "flax", "optax", "grain")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8


def worker(dataset: str, steps: int, skip: int) -> None:
  """Times the train step in this process of the job; process 0 prints the step times as one JSON line."""
  import jax
  import numpy as np
  from jaxspeech import sharding
  from jaxspeech.data import pipeline
  from jaxspeech.train import distributed, state as state_lib, trainer

  distributed.initialize()
  spec = importlib.util.spec_from_file_location("configs_ast", os.path.join(ROOT, "configs", "ast.py"))
  configs = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(configs)
  cfg = configs.get_config("tiny")
  cfg.data.path = dataset
  cfg.mesh.data = DEVICES
  run = trainer.Trainer(cfg, workdir="")
  data = run.family.make_data(cfg, "train", train=True, shard_index=jax.process_index(),
                              shard_count=jax.process_count())
  iterator = pipeline.make_iterator(data)
  times = []
  with sharding.use_rules(run.mesh, run.rules):
    state, _ = state_lib.create(run.family, cfg, run.tx, run.mesh)
    for i in range(skip + steps):
      start = time.perf_counter()
      batch = {k: jax.make_array_from_process_local_data(run.batch_shardings[k], np.asarray(v))
               for k, v in next(iterator).items() if k in run.batch_shardings}
      state, metrics = run.train_step(state, batch)
      metrics["loss"].block_until_ready()
      if i >= skip:
        times.append(time.perf_counter() - start)
  iterator.close()
  if jax.process_index() == 0:
    print(json.dumps({"step_times": times}))


def side(processes: int, args) -> float:
  """Median step time (s) of one run with `processes` processes over DEVICES devices in all."""
  command = [sys.executable, os.path.abspath(__file__), "--worker", "--dataset", args.dataset,
             "--steps", str(args.steps), "--skip", str(args.skip)]
  if processes > 1:
    command = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num-processes", str(processes),
               "--devices-per-process", str(DEVICES // processes), "--", *command]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES // processes}"}
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"{processes}-process run failed:\n{(result.stdout + result.stderr)[-3000:]}")
  line = next(l for l in result.stdout.splitlines() if '"step_times"' in l)
  return statistics.median(json.loads(line[line.index("{"):])["step_times"])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", default=os.path.join(ROOT, "data", "synth_speech", "1.0.0"))
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--skip", type=int, default=3, help="steps run before timing (compilation, warm-up)")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args.dataset, args.steps, args.skip)
    return 0
  load_before = os.getloadavg()
  one, two = [], []
  for _ in range(args.rounds):
    one.append(side(1, args))
    two.append(side(2, args))
  load_after = os.getloadavg()
  a, b = statistics.median(one), statistics.median(two)
  text = "\n".join([
      f"## {SECTION}",
      "",
      f"`benchmarks/multihost_overhead.py`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
      f"{common.machine()}; {common.versions(VERSIONS)}.",
      "",
      f"The trainer's train step for `configs/ast.py:tiny` (global batch 32, mesh data=8), each host feeding its "
      f"share of every global batch from the AST pipeline; median of {args.steps} timed steps (batch taken to loss "
      f"ready) after {args.skip} untimed ones, median over {args.rounds} alternating rounds. The 2-process side "
      "runs through `launch/local.py` (jax.distributed over gloo on 127.0.0.1). Both sides share the same CPU "
      "cores, so the ratio is the cost of the simulation (cross-process collectives over TCP, two Python hosts), "
      "not a multi-host speed-up.",
      "",
      "| processes × devices | step time (ms) | per round (ms) |",
      "| --- | ---: | --- |",
      f"| 1 × 8 | {a * 1e3:.1f} | {', '.join(f'{t * 1e3:.1f}' for t in one)} |",
      f"| 2 × 4 | {b * 1e3:.1f} | {', '.join(f'{t * 1e3:.1f}' for t in two)} |",
      "",
      f"Ratio 2 × 4 / 1 × 8: **{b / a:.2f}×**. Load average (1, 5, 15 min) before: "
      f"{', '.join(f'{x:.1f}' for x in load_before)}; after: {', '.join(f'{x:.1f}' for x in load_after)} "
      "(the machine is shared with other jobs; its load widens the spread between rounds).",
      ""])
  print(text)
  if args.write:
    common.write_section(SECTION, text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
