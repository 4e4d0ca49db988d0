"""GPU clusters through SLURM: writes an sbatch script that srun's the training command, then submits it.

  python launch/slurm.py --nodes 8 --gpus-per-node 8 --job-name ast-base --partition gpu \\
      --setup "source $HOME/jaxspeech/.venv/bin/activate" -- \\
      jaxspeech train --config=configs/ast.py:base --workdir=/shared/runs/ast_base

`--per gpu` (default) runs one process per GPU: `--ntasks-per-node=G` with all G GPUs visible to every
task, and JAX (which detects SLURM) gives process SLURM_LOCALID the GPU of that index. Not
`--gpus-per-task=1`: each task would then see its GPU as device 0 while JAX asks for device SLURM_LOCALID,
and the cgroup split blocks NVLink peer access between tasks. `--per node` runs one process per node that
drives all its GPUs; it joins the job through JAXSPEECH_* variables instead, since JAX's SLURM detection
would pin each process to one GPU. Every task logs to <log-dir>/<job-name>-<jobid>-<task>.log.
`--dry-run` prints the script and the sbatch command.
"""

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (launch/ is a folder of scripts, not a package)

# Per-node processes meet at the first node of the job; the port follows JAX's own SLURM choice.
PER_NODE_JOIN = ('export JAXSPEECH_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | '
                 'head -n 1):$((SLURM_JOB_ID % 4096 + 61440))"', 'export JAXSPEECH_NUM_PROCESSES="$SLURM_NNODES"')


def script(args, command: list[str]) -> str:
  per_gpu = args.per == "gpu"
  log = os.path.join(args.log_dir, "%x-%j")
  directives = [f"--job-name={args.job_name}", f"--nodes={args.nodes}",
                f"--ntasks-per-node={args.gpus_per_node if per_gpu else 1}", f"--gpus-per-node={args.gpus_per_node}",
                f"--time={args.time}", "--exclusive", f"--output={log}.out"]
  directives += [f"--cpus-per-task={args.cpus_per_task}"] if args.cpus_per_task else []
  directives += [f"--partition={args.partition}"] if args.partition else []
  directives += [f"--account={args.account}"] if args.account else []
  lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -euo pipefail",
           f"cd {shlex.quote(args.chdir)}", *args.setup]
  lines += [f"export {k}={shlex.quote(v)}" for k, v in common.gpu_env(args.xla_flags) + args.env]
  srun = ["srun", f"--output={log}-%t.log"]
  if per_gpu:
    lines.append(shlex.join(srun + command))
  else:
    lines += [*PER_NODE_JOIN,
              shlex.join(srun) + " bash -c " + shlex.quote(
                  f"JAXSPEECH_PROCESS_ID=$SLURM_PROCID exec env -u SLURM_LOCALID {shlex.join(command)}")]
  return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--job-name", default="jaxspeech")
  parser.add_argument("--nodes", type=common.positive, default=1)
  parser.add_argument("--gpus-per-node", type=common.positive, default=8)
  parser.add_argument("--per", choices=("gpu", "node"), default="gpu", help="one process per GPU or per node")
  parser.add_argument("--cpus-per-task", type=common.positive, default=None, help="default: the partition's")
  parser.add_argument("--time", default="24:00:00")
  parser.add_argument("--partition", default=None)
  parser.add_argument("--account", default=None)
  parser.add_argument("--chdir", default=os.getcwd(), help="where the job runs (the configs' folder)")
  parser.add_argument("--setup", action="append", default=[], help="a shell line run before srun (repeatable)")
  parser.add_argument("--log-dir", default="slurm-logs")
  parser.add_argument("--script", default=None, help="where to write the sbatch script (default: LOG_DIR/JOB.sbatch)")
  common.add_dry_run_arg(parser)
  common.add_command_args(parser, gpu=True)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  command = common.train_command(parser, args.command)
  args.log_dir = os.path.abspath(args.log_dir)  # SLURM neither creates it nor resolves it against --chdir
  path = args.script or os.path.join(args.log_dir, f"{args.job_name}.sbatch")
  text = script(args, command)
  if args.dry_run:
    print(text, end="")
  else:
    os.makedirs(args.log_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}", file=sys.stderr)
  return common.execute([["sbatch", path]], args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
