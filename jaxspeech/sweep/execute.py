"""One sweep run: its `jaxspeech train` command, its process, and what came of it.

A run is done when its `metrics.jsonl` holds the sweep metric (`eval/loss`) at the final step; the
exit code alone is not enough (SIGTERM makes the trainer save a checkpoint and exit 0). It diverged
when the trainer stopped on a non-finite loss, an eval loss is not finite, or the smoothed train loss
spiked (rose above `spike_ratio` × its lowest value so far and by more than `spike_rise`).
"""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any

from jaxspeech.sweep import counts

PLAN = "plan.json"
RESULT = "result.json"
LOG = "train.log"
SMOOTH = 5          # logged train losses averaged for spike detection
MAX_ATTEMPTS = 2    # the first try and one retry


@dataclasses.dataclass
class Outcome:
  status: str                      # done | failed | diverged | interrupted
  error: str | None = None
  final_eval_loss: float | None = None
  min_eval_loss: float | None = None
  final_train_loss: float | None = None
  wall_time: float = 0.0


def run_dir(sweep_dir: str, name: str) -> str:
  return os.path.join(sweep_dir, "runs", name)


def write_plan(sweep_dir: str, sweep, rows: list[dict[str, Any]]) -> None:
  """`DIR/plan.json`: what a SLURM or xpk task needs to run index i without the sweep config."""
  plan = {"name": sweep.name, "train_config": sweep.train_config, "command": list(sweep.command),
          "metric": sweep.metric, "spike_ratio": sweep.spike_ratio, "spike_rise": sweep.spike_rise,
          "runs": {str(r["idx"]): {"name": r["name"], "overrides": r["overrides"], "steps": r["steps"]}
                   for r in rows}}
  os.makedirs(sweep_dir, exist_ok=True)
  with open(os.path.join(sweep_dir, PLAN + ".tmp"), "w") as f:
    json.dump(plan, f, indent=1)
  os.replace(os.path.join(sweep_dir, PLAN + ".tmp"), os.path.join(sweep_dir, PLAN))


def read_plan(sweep_dir: str) -> dict[str, Any]:
  path = os.path.join(sweep_dir, PLAN)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {path}; `jaxspeech sweep run` writes it")
  with open(path) as f:
    return json.load(f)


def train_command(plan: dict[str, Any], entry: dict[str, Any], workdir: str) -> list[str]:
  command = [part.replace("{python}", sys.executable) for part in plan["command"]]
  return command + [f"--config={plan['train_config']}", f"--workdir={workdir}",
                    *(counts.flag(k, v) for k, v in entry["overrides"].items())]


def start(command: list[str], workdir: str, attempt: int) -> subprocess.Popen:
  """Starts `command` (guarded: it gets SIGTERM if this process dies), logging to `workdir/train.log`."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, LOG), "a") as log:
    log.write(f"\n== attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n")
    log.flush()
    guarded = [sys.executable, "-m", "jaxspeech.sweep.guard", str(os.getpid()), *command]
    return subprocess.Popen(guarded, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def read_metrics(workdir: str, metric: str) -> tuple[dict[int, float], dict[int, float]]:
  """({step: train loss}, {step: eval metric}); a resumed run's repeated steps keep the last line.
  Non-finite values are written as "nan"/"inf" strings, which float() reads."""
  train, evals = {}, {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line torn by a kill
        if "loss" in record:
          train[int(record["step"])] = float(record["loss"])
        if metric in record:
          evals[int(record["step"])] = float(record[metric])
  return dict(sorted(train.items())), dict(sorted(evals.items()))


def find_spike(train: dict[int, float], ratio: float, rise: float) -> str | None:
  steps, losses = list(train), list(train.values())
  low, low_step = math.inf, None
  for i in range(SMOOTH - 1, len(losses)):
    smooth = sum(losses[i - SMOOTH + 1:i + 1]) / SMOOTH
    if smooth > ratio * low and smooth - low > rise:
      return (f"loss spiked: smoothed train loss {smooth:.4g} at step {steps[i]}, up from {low:.4g} at step "
              f"{low_step}")
    if smooth < low:
      low, low_step = smooth, steps[i]
  return None


def attempt_lines(workdir: str) -> list[str]:
  """The non-empty lines the latest attempt printed (progress-bar redraws split into lines)."""
  path = os.path.join(workdir, LOG)
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    f.seek(max(0, os.path.getsize(path) - 65536))
    text = f.read().decode(errors="replace")
  text = text.rsplit("\n== attempt ", 1)[-1].split("\n", 1)[-1]
  return [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]


def last_error(lines: list[str]) -> str:
  """The trainer's one-line error (or an exception's last line), else the last line printed."""
  errors = [line for line in lines if ": error:" in line or "Error" in line.split(":")[0]]
  return (errors or lines or [""])[-1][:500]


def classify(returncode: int, workdir: str, steps: int, metric: str, spike_ratio: float, spike_rise: float,
             wall_time: float = 0.0) -> Outcome:
  train, evals = read_metrics(workdir, metric)

  def finite(values):
    return [v for v in values if math.isfinite(v)]

  losses = {"final_eval_loss": (finite([evals[max(evals)]]) or [None])[0] if evals else None,
            "min_eval_loss": min(finite(evals.values()), default=None),
            "final_train_loss": (finite([train[max(train)]]) or [None])[0] if train else None}

  def outcome(status, error=None):
    return Outcome(status, error, wall_time=wall_time, **losses)

  lines = attempt_lines(workdir)
  error = last_error(lines)
  if "non-finite" in error:
    return outcome("diverged", error)
  bad = [s for s, v in evals.items() if not math.isfinite(v)]
  if bad:
    return outcome("diverged", f"{metric} is not finite at step {bad[0]}")
  if returncode < 0:
    return outcome("failed", f"killed by {signal.Signals(-returncode).name}")
  if returncode != 0:
    return outcome("failed", f"exit code {returncode}: {error}")
  if steps not in evals:
    stopped = [line for line in lines if "saved a checkpoint at step" in line]
    if stopped:
      return outcome("interrupted", stopped[-1])
    return outcome("failed", f"exited 0 without {metric} at step {steps}: {error}")
  spike = find_spike(train, spike_ratio, spike_rise)
  if spike:
    return outcome("diverged", spike)
  return outcome("done")


def write_result(workdir: str, outcome: Outcome, attempts: int) -> None:
  with open(os.path.join(workdir, RESULT + ".tmp"), "w") as f:
    json.dump({**dataclasses.asdict(outcome), "attempts": attempts}, f)
  os.replace(os.path.join(workdir, RESULT + ".tmp"), os.path.join(workdir, RESULT))


def read_result(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, RESULT)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_task(sweep_dir: str, index: int) -> int:
  """Runs plan entry `index` to completion in this process (a SLURM array task or an xpk workload):
  up to two attempts, the outcome written to the run's result.json. Exit code 0 unless it failed."""
  plan = read_plan(sweep_dir)
  if str(index) not in plan["runs"]:
    raise KeyError(f"no run with index {index} in {os.path.join(sweep_dir, PLAN)}")
  entry = plan["runs"][str(index)]
  workdir = run_dir(sweep_dir, entry["name"])
  previous = read_result(workdir)
  if previous and previous["status"] in ("done", "diverged"):
    print(f"{entry['name']}: already {previous['status']}")
    return 0
  attempts, wall, outcome, proc, stopping = 0, 0.0, None, None, []

  def on_term(signum, frame):  # preemption: the trainer saves a checkpoint; record the run as interrupted
    del signum, frame
    stopping.append(True)
    if proc is not None and proc.poll() is None:
      proc.send_signal(signal.SIGTERM)

  previous_handler = signal.signal(signal.SIGTERM, on_term)
  try:
    while attempts < MAX_ATTEMPTS and not stopping:
      attempts += 1
      t0 = time.time()
      proc = start(train_command(plan, entry, workdir), workdir, attempts)
      try:
        returncode = proc.wait()
      except KeyboardInterrupt:
        stopping.append(True)
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait()
      wall += time.time() - t0
      outcome = classify(returncode, workdir, entry["steps"], plan["metric"], plan["spike_ratio"],
                         plan["spike_rise"], wall)
      if stopping and outcome.status == "failed":
        outcome.status = "interrupted"
      if outcome.status != "failed":
        break
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
  if outcome is None:
    print(f"{entry['name']}: stopped before it started")
    return 0
  if outcome.status == "interrupted":
    attempts -= 1  # not held against the run
  write_result(workdir, outcome, attempts)
  print(f"{entry['name']}: {outcome.status}" + (f" ({outcome.error})" if outcome.error else ""))
  return 1 if outcome.status == "failed" else 0
