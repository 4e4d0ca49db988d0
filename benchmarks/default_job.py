"""What `make train` reaches: AST tiny speaker classification on the default corpus, end to end.

    .venv/bin/python benchmarks/default_job.py [--write] [--data data/synth_speech/1.0.0]

Runs the same command as `make train` (`jaxspeech train --config=configs/ast.py:tiny`) in a fresh workdir, then
`jaxspeech eval` on the held-out speakers' utterances of the validation and test splits, and reports accuracy,
wall time and goodput. `--write` replaces this script's section of benchmarks/RESULTS.md.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import common

SECTION = "Default training job (`make train`)"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain")


def jaxspeech(*args: str) -> subprocess.CompletedProcess:
  cmd = [sys.executable, "-m", "jaxspeech.cli", *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="data/synth_speech/1.0.0")
  parser.add_argument("--write", action="store_true")
  args = parser.parse_args()
  load = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as workdir:
    flags = ["--config=configs/ast.py:tiny", f"--workdir={workdir}", f"--config.data.path={args.data}"]
    t0 = time.perf_counter()
    jaxspeech("train", *flags)
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = [json.loads(line) for line in f]
    evals = [m for m in lines if "eval/accuracy" in m]
    test = jaxspeech("eval", *flags, "--config.data.eval_split=test").stdout
  test_accuracy = float(test.split("eval/accuracy")[1].split()[0])
  final = lines[-1]
  today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
  rows = "\n".join(f"| {m['step']} | {m['eval/accuracy']:.3f} | {m['eval/loss']:.3f} |" for m in evals)
  text = f"""## {SECTION}

Written by `benchmarks/default_job.py` on {today} (UTC): {common.machine()}; load average {load:.2f} before the run;
{common.versions(VERSIONS)}.

`jaxspeech train --config=configs/ast.py:tiny` (AST speaker classification over the 12 training speakers of the
default corpus, 16-way head, Kaldi fbank on device):

| step | validation accuracy | validation loss |
|---:|---:|---:|
{rows}

- Test split (held-out sentences of the same speakers): accuracy **{test_accuracy:.3f}** (`jaxspeech eval
  --config.data.eval_split=test`).
- Wall time of `jaxspeech train` {wall:.0f} s, of which compile {final['time/compile_s']:.1f} s, data
  {final['time/data_s']:.1f} s, checkpoints {final['time/checkpoint_s']:.1f} s, eval {final['time/eval_s']:.1f} s;
  goodput {final['goodput']:.2f}.
"""
  print(text)
  if args.write:
    common.write_section(SECTION, text)


if __name__ == "__main__":
  main()
