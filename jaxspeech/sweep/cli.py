"""`jaxspeech sweep run|fit|status|task`.

  jaxspeech sweep run --config=configs/sweeps/ast_cpu.py --workdir=DIR [--backend local|slurm|xpk]
                      [--parallel N] [--dry-run] [--retry-failed] [--resubmit]
  jaxspeech sweep fit --workdir=DIR [--loss final|min] [--bootstrap 200] [--starts 128]
  jaxspeech sweep status --workdir=DIR
  jaxspeech sweep task --workdir=DIR --index=I      (what SLURM array tasks and xpk workloads run)
"""

import argparse
import contextlib
import fcntl
import os
import shlex
import shutil
import sys

from jaxspeech.sweep import backends, design, execute, registry
from jaxspeech.sweep import fit, report


@contextlib.contextmanager
def _lock(sweep_dir: str):
  os.makedirs(sweep_dir, exist_ok=True)
  with open(os.path.join(sweep_dir, ".lock"), "w") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      raise ValueError(f"another `jaxspeech sweep` is working on {sweep_dir}") from e
    yield


def _preview(sweep_dir: str, runs: list[design.Run]) -> list[dict]:
  """The rows `sync` would give, without writing anything (for --dry-run)."""
  reg = registry.Registry(sweep_dir, in_memory=True)
  try:
    return reg.sync(runs)
  finally:
    reg.close()


def _table(rows: list[dict]) -> str:
  head = f"{'idx':>4}  {'run':<24} {'status':<10} {'N':>10} {'D':>10} {'steps':>6} {'6ND':>9} {'FLOPs':>9}"
  lines = [head]
  for r in rows:
    lines.append(f"{r['idx']:>4}  {r['name']:<24} {r['status']:<10} {r['params']:>10,} {r['tokens']:>10.3g} "
                 f"{r['steps']:>6} {r['compute']:>9.3g} {r['flops']:>9.3g}")
  return "\n".join(lines)


def _run(args) -> int:
  sweep = design.load(args.config)
  sweep_dir = os.path.abspath(args.workdir)
  runs, notes = design.plan(sweep)
  if args.dry_run:
    rows = _preview(sweep_dir, runs)
    todo = [r for r in rows if r["status"] == "pending" or (args.retry_failed and r["status"] == "failed")
            or (args.resubmit and r["status"] == "submitted")]
    print(f"sweep {sweep.name}: {len(rows)} runs, {len(todo)} to run")
    print(_table(rows))
    for note in notes:
      print(note)
    print()
    if args.backend == "local":
      plan = {"train_config": sweep.train_config, "command": list(sweep.command)}
      for r in todo:
        print(shlex.join(execute.train_command(plan, r, execute.run_dir(sweep_dir, r["name"]))))
    elif args.backend == "slurm":
      print(backends.slurm_script(sweep, sweep_dir, [r["idx"] for r in todo], args.parallel), end="")
    else:
      for command in backends.xpk_commands(sweep, sweep_dir, todo):
        print(shlex.join(command))
    return 0

  with _lock(sweep_dir), registry.open_registry(sweep_dir) as reg:
    backends.collect(sweep_dir, reg)
    rows = reg.sync(runs)
    execute.write_plan(sweep_dir, sweep, rows)
    shutil.copyfile(args.config, os.path.join(sweep_dir, "sweep_config.py"))
    for note in notes:
      print(note)
    for r in rows:
      if (args.retry_failed and r["status"] == "failed") or (args.resubmit and r["status"] == "submitted"):
        reg.update(r["name"], status="pending", attempts=0)
    done = len(reg.rows(*registry.FINAL))
    todo = reg.rows("pending")
    print(f"sweep {sweep.name}: {len(rows)} runs; {done} finished, {len(todo)} to run, "
          f"{len(reg.rows('submitted'))} submitted ({sweep_dir})")
    if args.backend == "local":
      code = backends.run_local(sweep_dir, reg, args.parallel or 1)
      print(_summary(reg))
      return code
    if not todo:
      return 0
    if args.backend == "slurm":
      return backends.submit_slurm(sweep, sweep_dir, reg, todo, args.parallel)
    return backends.submit_xpk(sweep, sweep_dir, reg, todo)


def _summary(reg) -> str:
  counts = {}
  for r in reg.rows():
    counts[r["status"]] = counts.get(r["status"], 0) + 1
  return "status: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def _status(args) -> int:
  sweep_dir = os.path.abspath(args.workdir)
  if not os.path.exists(os.path.join(sweep_dir, registry.FILE)):
    raise FileNotFoundError(f"no sweep in {sweep_dir} (no {registry.FILE})")
  with registry.open_registry(sweep_dir) as reg:
    backends.collect(sweep_dir, reg)
    rows = reg.rows()
    print(_table(rows))
    for r in rows:
      if r["status"] in registry.FINAL or r["final_eval_loss"] is not None:
        print(f"  {r['name']}: {r['status']}, eval loss final {backends.fmt_loss(r['final_eval_loss'])} "
              f"min {backends.fmt_loss(r['min_eval_loss'])}, {r['attempts']} attempt(s), "
              f"{(r['wall_time'] or 0):.0f} s" + (f"; {r['error']}" if r["error"] else ""))
    print(_summary(reg))
  return 0


def _fit(args) -> int:
  sweep_dir = os.path.abspath(args.workdir)
  if not os.path.exists(os.path.join(sweep_dir, registry.FILE)):
    raise FileNotFoundError(f"no sweep in {sweep_dir} (no {registry.FILE}); run `jaxspeech sweep run` first")
  with registry.open_registry(sweep_dir) as reg:
    backends.collect(sweep_dir, reg)
    rows = reg.rows()
  name = execute.read_plan(sweep_dir)["name"] if os.path.exists(os.path.join(sweep_dir, execute.PLAN)) else ""
  result = fit.fit_sweep(rows, loss=args.loss, bootstrap=args.bootstrap, seed=args.seed, starts=args.starts)
  paths = report.write(sweep_dir, name, rows, result)
  print(report.summary(result))
  print("wrote " + ", ".join(paths))
  return 0


def _task(args) -> int:
  return execute.run_task(os.path.abspath(args.workdir), args.index)


def add_parser(groups) -> None:
  sweep = groups.add_parser("sweep", help="scaling-law sweeps: run, fit, status", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = sweep.add_subparsers(dest="command", required=True)
  p = commands.add_parser("run", help="plan and run (or submit) a sweep's runs; finished runs are skipped")
  p.add_argument("--config", required=True, help="a sweep config, e.g. configs/sweeps/ast_cpu.py")
  p.add_argument("--workdir", required=True, help="the sweep dir: registry, plan, runs/<name>/, report")
  p.add_argument("--backend", choices=("local", "slurm", "xpk"), default="local")
  p.add_argument("--parallel", type=int, default=0,
                 help="local: runs at a time (default 1); slurm: array tasks at a time (default no limit)")
  p.add_argument("--dry-run", action="store_true", help="print the plan and the commands or script; run nothing")
  p.add_argument("--retry-failed", action="store_true", help="give failed runs two more attempts")
  p.add_argument("--resubmit", action="store_true", help="submit again runs whose SLURM task or workload vanished")
  p.set_defaults(run=_run)
  p = commands.add_parser("fit", help="fit L(N, D) and the IsoFLOP frontier; write report.md, PNGs, fit.json")
  p.add_argument("--workdir", required=True)
  p.add_argument("--loss", choices=("final", "min"), default="final", help="the eval loss each run contributes")
  p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for confidence intervals")
  p.add_argument("--starts", type=int, default=128,
                 help="L-BFGS starts: the best-scoring points of the initialisation grid (0: all 4,500)")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(run=_fit)
  p = commands.add_parser("status", help="the registry, one line per run")
  p.add_argument("--workdir", required=True)
  p.set_defaults(run=_status)
  p = commands.add_parser("task", help="run one planned run (what SLURM array tasks and xpk workloads call)")
  p.add_argument("--workdir", required=True)
  p.add_argument("--index", type=int, required=True)
  p.set_defaults(run=_task)


def main(argv: list[str]) -> int:
  """`jaxspeech sweep ARGV`, for the sweep's own tests and runners."""
  parser = argparse.ArgumentParser(prog="jaxspeech")
  add_parser(parser.add_subparsers(dest="group", required=True))
  args = parser.parse_args(["sweep", *argv])
  try:
    return args.run(args)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"jaxspeech sweep: error: {e}", file=sys.stderr)
    return 2
