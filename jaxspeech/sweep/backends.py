"""Where runs execute: `local` (this machine, N processes at a time), `slurm` (one array job), `xpk`
(one GKE workload per run). SLURM tasks and xpk workloads run `jaxspeech sweep task --index=I`,
which reads `DIR/plan.json` and writes `DIR/runs/<name>/result.json`; the sweep dir must be visible
at the same path on the workers (a shared filesystem, or the xpk `--storage` mount).
"""

import collections
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

from jaxspeech.sweep import execute
from jaxspeech.sweep.design import Sweep
from jaxspeech.sweep.registry import Registry


def fmt_loss(value) -> str:
  return "-" if value is None else f"{value:.4f}"


def _wait_gone(pid: int | None, workdir: str, timeout: float = 120.0) -> None:
  """Waits for a killed runner's train process (it got SIGTERM and is saving a checkpoint)."""
  if not pid:
    return
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      if workdir.encode() not in f.read():
        return  # the pid was reused by something else
  except OSError:
    return
  deadline = time.time() + timeout
  while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
    time.sleep(0.2)
  if os.path.exists(f"/proc/{pid}"):
    os.kill(pid, signal.SIGKILL)


class _Stop(Exception):
  pass


def run_local(sweep_dir: str, reg: Registry, parallel: int = 1, log=print) -> int:
  """Runs every pending run, `parallel` at a time; a failed run is retried once. Returns an exit code:
  0 when nothing failed, 1 when some run failed, 130 when stopped by SIGINT/SIGTERM (runs in flight
  saved a checkpoint and stay pending, so a rerun resumes them)."""
  plan = execute.read_plan(sweep_dir)
  for row in reg.rows("running"):  # left by a runner that was killed
    _wait_gone(row["pid"], execute.run_dir(sweep_dir, row["name"]))
    reg.update(row["name"], status="pending", pid=None, attempts=max(0, row["attempts"] - 1))
  queue = collections.deque(reg.rows("pending"))
  total, finished = len(queue), 0
  active: dict[str, tuple[Any, dict, float]] = {}
  interrupted = []

  def on_term(signum, frame):
    del signum, frame
    raise _Stop()

  previous = signal.signal(signal.SIGTERM, on_term)
  try:
    while queue or active:
      while queue and len(active) < max(1, parallel):
        row = queue.popleft()
        row["attempts"] += 1
        entry = plan["runs"][str(row["idx"])]
        workdir = execute.run_dir(sweep_dir, row["name"])
        proc = execute.start(execute.train_command(plan, entry, workdir), workdir, row["attempts"])
        reg.update(row["name"], status="running", pid=proc.pid, attempts=row["attempts"])
        log(f"[{finished + len(active) + 1}/{total}] start {row['name']}: N={row['params']:,} D={row['tokens']:.3g} "
            f"steps={row['steps']}" + (" (retry)" if row["attempts"] > 1 else ""))
        active[row["name"]] = (proc, row, time.time())
      time.sleep(0.1)
      for name, (proc, row, t0) in list(active.items()):
        if proc.poll() is None:
          continue
        del active[name]
        wall = (row["wall_time"] or 0.0) + time.time() - t0
        outcome = execute.classify(proc.returncode, execute.run_dir(sweep_dir, name), row["steps"], plan["metric"],
                                   plan["spike_ratio"], plan["spike_rise"], wall)
        fields = dict(pid=None, wall_time=wall, error=outcome.error, final_eval_loss=outcome.final_eval_loss,
                      min_eval_loss=outcome.min_eval_loss, final_train_loss=outcome.final_train_loss)
        if outcome.status == "failed" and row["attempts"] < execute.MAX_ATTEMPTS:
          reg.update(name, status="pending", **fields)
          row["wall_time"] = wall
          queue.appendleft(row)
          log(f"  {name} failed ({outcome.error}); retrying once")
          continue
        if outcome.status == "interrupted":
          reg.update(name, status="pending", attempts=row["attempts"] - 1, **fields)
          interrupted.append(name)
        else:
          reg.update(name, status=outcome.status, **fields)
        execute.write_result(execute.run_dir(sweep_dir, name), outcome, row["attempts"])
        finished += 1
        log(f"[{finished}/{total}] {outcome.status} {name}: {plan['metric']} {fmt_loss(outcome.final_eval_loss)}"
            f" ({wall:.0f} s)" + (f": {outcome.error}" if outcome.error else ""))
  except (KeyboardInterrupt, _Stop):
    log(f"stopping: {len(active)} run(s) in flight save a checkpoint; rerun the same command to resume")
    for proc, _, _ in active.values():
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    for name, (proc, row, t0) in active.items():
      proc.wait()
      reg.update(name, status="pending", pid=None, attempts=row["attempts"] - 1,
                 wall_time=(row["wall_time"] or 0.0) + time.time() - t0)
    return 130
  finally:
    signal.signal(signal.SIGTERM, previous)
  if interrupted:
    log(f"{len(interrupted)} run(s) were stopped from outside and stay pending: {', '.join(interrupted)}")
  return 1 if reg.rows("failed") else 0


def _array_spec(indices: list[int]) -> str:
  """[0, 1, 2, 5, 7, 8] → '0-2,5,7-8'."""
  parts, start = [], None
  for i, idx in enumerate(indices):
    if start is None:
      start = idx
    if i + 1 == len(indices) or indices[i + 1] != idx + 1:
      parts.append(str(start) if start == idx else f"{start}-{idx}")
      start = None
  return ",".join(parts)


def slurm_script(sweep: Sweep, sweep_dir: str, indices: list[int], parallel: int = 0, cwd: str | None = None) -> str:
  """The sbatch script of one array job over `indices` (at most `parallel` tasks at once when > 0)."""
  python = sweep.slurm.python or sys.executable
  array = _array_spec(sorted(indices)) + (f"%{parallel}" if parallel else "")
  lines = ["#!/bin/bash",
           f"#SBATCH --job-name=jaxspeech-sweep-{sweep.name}",
           f"#SBATCH --array={array}",
           f"#SBATCH --output={os.path.join(sweep_dir, 'slurm', '%A_%a.log')}",
           *(f"#SBATCH {d}" for d in sweep.slurm.directives),
           "set -euo pipefail",
           f"cd {shlex.quote(cwd or os.getcwd())}",
           *sweep.slurm.setup,
           f"exec {shlex.quote(python)} -m jaxspeech.cli sweep task --workdir={shlex.quote(sweep_dir)} "
           f'--index="$SLURM_ARRAY_TASK_ID"']
  return "\n".join(lines) + "\n"


def submit_slurm(sweep: Sweep, sweep_dir: str, reg: Registry, rows: list[dict], parallel: int, log=print) -> int:
  path = os.path.join(sweep_dir, "slurm", "array.sbatch")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(slurm_script(sweep, sweep_dir, [r["idx"] for r in rows], parallel))
  try:
    result = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True, check=False)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"sbatch is not on PATH; submit {path} from a SLURM login node") from e
  if result.returncode != 0:
    raise ValueError(f"sbatch {path} failed: {result.stderr.strip()}")
  job = result.stdout.strip().split(";")[0]
  for row in rows:
    reg.update(row["name"], status="submitted", job=f"{job}_{row['idx']}")
  log(f"submitted SLURM array job {job} ({len(rows)} runs, script {path}); "
      f"rerun `jaxspeech sweep run` or `jaxspeech sweep status` to collect results")
  return 0


def workload_name(sweep: Sweep, idx: int) -> str:
  """xpk workload names: lowercase letters, digits and '-', starting with a letter, at most 40 characters."""
  slug = re.sub(r"[^a-z0-9]+", "-", sweep.name.lower()).strip("-")
  if not slug or not slug[0].isalpha():
    slug = "sweep-" + slug
  return f"{slug[:35].rstrip('-')}-{idx:03d}"


def xpk_commands(sweep: Sweep, sweep_dir: str, rows: list[dict]) -> list[list[str]]:
  x = sweep.xpk
  missing = [k for k in ("cluster", "device_type", "docker_image") if not getattr(x, k)]
  if missing:
    raise ValueError(f"the xpk backend needs xpk.{', xpk.'.join(missing)} in sweep {sweep.name!r}")
  commands = []
  for row in rows:
    command = ["xpk", "workload", "create", f"--cluster={x.cluster}"]
    command += [f"--project={x.project}"] if x.project else []
    command += [f"--zone={x.zone}"] if x.zone else []
    command += [f"--workload={workload_name(sweep, row['idx'])}", f"--docker-image={x.docker_image}",
                f"--device-type={x.device_type}", f"--num-slices={x.num_slices}", *x.args,
                f"--command={x.jaxspeech} sweep task --workdir={sweep_dir} --index={row['idx']}"]
    commands.append(command)
  return commands


def submit_xpk(sweep: Sweep, sweep_dir: str, reg: Registry, rows: list[dict], log=print) -> int:
  for row, command in zip(rows, xpk_commands(sweep, sweep_dir, rows)):
    try:
      result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
      raise FileNotFoundError("xpk is not on PATH (pip install xpk)") from e
    if result.returncode != 0:
      raise ValueError(f"{shlex.join(command)} failed: {result.stderr.strip()[-500:]}")
    reg.update(row["name"], status="submitted", job=workload_name(sweep, row["idx"]))
    log(f"submitted xpk workload {workload_name(sweep, row['idx'])} ({row['name']})")
  return 0


def collect(sweep_dir: str, reg: Registry) -> int:
  """Folds the result.json of submitted runs (SLURM tasks, xpk workloads) into the registry."""
  count = 0
  for row in reg.rows("submitted"):
    result = execute.read_result(execute.run_dir(sweep_dir, row["name"]))
    if result is None:
      continue
    status = "pending" if result["status"] == "interrupted" else result["status"]
    reg.update(row["name"], status=status, attempts=result["attempts"], error=result["error"],
               final_eval_loss=result["final_eval_loss"], min_eval_loss=result["min_eval_loss"],
               final_train_loss=result["final_train_loss"], wall_time=result["wall_time"])
    count += 1
  return count
