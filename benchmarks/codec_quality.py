"""What the tiny codec reaches on the default corpus: train configs/codec.py:tiny, then `jaxspeech codec eval`.

    .venv/bin/python benchmarks/codec_quality.py --workdir /work/artifacts/codec_tiny --steps 500 [--write]

Trains (`nice -n 5 jaxspeech train --config=configs/codec.py:tiny`, `--steps`, no eval during training) unless
the workdir already holds a checkpoint at `--steps`, sampling the load average every 30 s; then evaluates the
newest checkpoint on whole utterances of a held-out split (`jaxspeech codec eval`: mel distance, STOI, PESQ wb,
codebook usage and perplexity). `--write` replaces this section of benchmarks/RESULTS.md.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import common

SECTION = "Codec quality: configs/codec.py:tiny on the default corpus (X-codec2, issue #5)"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_command(args) -> list[str]:
  return ["nice", "-n", "5", os.path.join(ROOT, ".venv/bin/jaxspeech"), "train", "--config=configs/codec.py:tiny",
          f"--workdir={args.workdir}", f"--config.data.path={args.data_dir}", f"--config.train.steps={args.steps}",
          "--config.train.log_every=10", "--config.train.eval_every=0", "--config.train.checkpoint_every=100",
          *([f"--config.optim.lr={args.lr}"] if args.lr else [])]


def train(args) -> list[float]:
  """Runs the training command; the 1-minute load averages sampled while it ran."""
  loads = []
  with subprocess.Popen(train_command(args), cwd=ROOT) as process:
    while process.poll() is None:
      loads.append(os.getloadavg()[0])
      time.sleep(30)
  if process.returncode:
    sys.exit(f"training failed ({process.returncode})")
  return loads


def trained_steps(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [m for m in map(json.loads, f) if "loss" in m]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--data-dir", default=os.path.join(ROOT, "data/synth_speech/1.0.0"))
  parser.add_argument("--split", default="test")
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--lr", type=float, default=None, help="optim.lr (default: the config's)")
  parser.add_argument("--train-load", type=float, default=None,
                      help="mean load average of a training run this script did not start (for the report)")
  parser.add_argument("--note", default="", help="a closing remark for the report (e.g. what went wrong)")
  parser.add_argument("--write", action="store_true")
  args = parser.parse_args()
  done = os.path.isdir(os.path.join(args.workdir, "checkpoints", str(args.steps)))
  loads = [] if done else train(args)
  train_load = statistics.mean(loads) if loads else args.train_load
  steps = trained_steps(args.workdir)
  result = subprocess.run(
      [os.path.join(ROOT, ".venv/bin/jaxspeech"), "codec", "eval", "--workdir", args.workdir, "--data-dir",
       args.data_dir, "--split", args.split], cwd=ROOT, capture_output=True, text=True, check=True)
  scores = json.loads(result.stdout)
  first, last = steps[0], steps[-1]
  cfg = json.load(open(os.path.join(args.workdir, "config.json")))
  load = "not recorded" if train_load is None else f"{train_load:.1f} on average"
  text = (
      f"## {SECTION}\n\n`benchmarks/codec_quality.py`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
      f"UTC. {common.machine()}, shared with other jobs (load average {load} while training, "
      f"{os.getloadavg()[0]:.1f} at evaluation).\n\n"
      f"Training: `{' '.join(['jaxspeech'] + train_command(args)[4:])}` — {last['step']} steps of batch "
      f"{cfg['train']['batch_size']} × {cfg['data']['crop_seconds']} s crops at lr {cfg['optim']['lr']:g} (generator "
      f"and discriminators in their own AdamW groups), {last['time/wall_s'] / 60:.0f} min wall time ({last['time/compile_s']:.0f} s compiling). "
      f"Multi-resolution mel L1 (training crops): {first['mel']:.2f} at step {first['step']} → {last['mel']:.2f} at "
      f"step {last['step']}.\n\n"
      f"Evaluation: `jaxspeech codec eval --workdir WORKDIR --split {args.split}` on {scores['utterances']} whole "
      f"held-out utterances of `{os.path.relpath(args.data_dir, ROOT)}` (16 kHz):\n\n"
      "| mel distance | STOI | PESQ wb | codebook usage | codebook perplexity |\n| --- | --- | --- | --- | --- |\n"
      f"| {scores['mel_distance']:.3f} | {scores['stoi']:.3f} | {scores['pesq']:.2f} | "
      f"{scores['codebook_usage']:.4f} ({scores['codebook_usage'] * 65536:.0f} codes) | "
      f"{scores['codebook_perplexity']:.1f} |\n\n"
      "For scale: the released X-codec2 (1.4M steps of batch 64 × 1 s, with the semantic branch) reports STOI 0.92 "
      f"and PESQ wb 2.44 on LibriSpeech test-clean.{' ' + args.note if args.note else ''}\n")
  print(text)
  if args.write:
    common.write_section(SECTION, text)


if __name__ == "__main__":
  main()
