"""TPU VM pods through gcloud: create the TPU, set up every worker, start training, fetch logs, stop, delete.

  python launch/tpu_vm.py create --name pod --zone us-east5-a --project P --accelerator v5p-64
  python launch/tpu_vm.py run    --name pod --zone us-east5-a --project P --run r1 -- \\
      jaxspeech train --config=configs/ast.py:base --workdir=gs://bucket/ast_base
  python launch/tpu_vm.py logs   --name pod --zone us-east5-a --project P --run r1 --dest logs/r1
  python launch/tpu_vm.py stop   --name pod --zone us-east5-a --project P --run r1
  python launch/tpu_vm.py delete --name pod --zone us-east5-a --project P

With `--num-slices N` (N > 1) the TPU is a multi-slice queued resource (nodes NAME-0 … NAME-{N-1}); the
TPU runtime gives every host its MEGASCALE_* variables, JAX forms one job over all slices, and `run` adds
`--config.mesh.dcn_data=N` (data parallel across slices) unless the command sets a `dcn_` axis itself.

`run` ships the code (the local checkout's HEAD by `git archive`, or `--branch` of `--repo`), builds
~/jaxspeech-venv with `pip install -e . jax[tpu]`, then starts the command in the background on every
worker; each worker writes ~/jaxspeech-runs/<run>/<hostname>.log. `stop` sends SIGTERM: the trainer saves a
checkpoint and exits. Every subcommand takes `--dry-run`, which prints the exact commands.
"""

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (launch/ is a folder of scripts, not a package)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_CODE = "~/jaxspeech"
REMOTE_VENV = "~/jaxspeech-venv"


def _group(args) -> list[str]:
  """gcloud's command group: a plain TPU VM for one slice, a queued resource for several."""
  return ["gcloud", "compute", "tpus", "tpu-vm" if args.num_slices == 1 else "queued-resources"]


def _workers(args) -> list[str]:
  return ["--worker=all"] if args.num_slices == 1 else ["--node=all", "--worker=all"]


def _location(args) -> list[str]:
  return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def _ssh(args, remote: str) -> list[str]:
  return _group(args) + ["ssh", args.name, *_workers(args), *_location(args), "--command", remote]


def _scp(args, src: str, dst: str) -> list[str]:
  return _group(args) + ["scp", src, dst, *_workers(args), *_location(args)]


def _log_dir(args) -> str:
  return f"~/jaxspeech-runs/{args.run}"


def create(args) -> list[list[str]]:
  version = args.version or common.TPU_RUNTIMES[common.TPU_TYPE.fullmatch(args.accelerator).group(1)]
  spot = ["--spot"] if args.spot else []
  if args.num_slices == 1:
    return [_group(args) + ["create", args.name, *_location(args), f"--accelerator-type={args.accelerator}",
                            f"--version={version}", *spot]]
  return [_group(args) + ["create", args.name, *_location(args), f"--accelerator-type={args.accelerator}",
                          f"--runtime-version={version}", f"--node-count={args.num_slices}",
                          f"--node-prefix={args.name}", *spot]]


def _setup(args) -> list[list[str]]:
  """Ships the code to every worker and builds the venv there."""
  if args.branch:
    fetch = [f"rm -rf {REMOTE_CODE} && git clone --depth=1 --branch={shlex.quote(args.branch)} "
             f"{shlex.quote(args.repo)} {REMOTE_CODE}"]
    commands = []
  else:
    archive = f".cache/jaxspeech-{args.run}-src.tar.gz"  # in the checkout (git-ignored)
    commands = [["mkdir", "-p", os.path.relpath(os.path.join(ROOT, ".cache"))],
                ["git", "-C", ROOT, "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
                _scp(args, os.path.relpath(os.path.join(ROOT, archive)), f"{args.name}:jaxspeech-src.tar.gz")]
    fetch = [f"rm -rf {REMOTE_CODE} && mkdir -p {REMOTE_CODE}",
             f"tar -xzf ~/jaxspeech-src.tar.gz -C {REMOTE_CODE}"]
  venv = [f"python3 -m venv {REMOTE_VENV}", f"{REMOTE_VENV}/bin/pip install -q -U pip",
          f"{REMOTE_VENV}/bin/pip install -q -e {REMOTE_CODE} \"jax[tpu]\""]
  return commands + [_ssh(args, " && ".join(["set -e", *fetch, *venv]))]


def run(args, parser) -> list[list[str]]:
  if args.branch and not args.repo:
    parser.error("--branch needs --repo (the git URL the workers clone)")
  command = common.train_command(parser, args.command, args.num_slices)
  log = f"{_log_dir(args)}/$(hostname)"
  start = (f"mkdir -p {_log_dir(args)} && cd {REMOTE_CODE} && export PATH={REMOTE_VENV}/bin:$PATH && "
           f"{common.shell_env(args.env)}"
           f"(setsid nohup {shlex.join(command)} > {log}.log 2>&1 < /dev/null & echo $! > {log}.pid)")
  return ([] if args.no_setup else _setup(args)) + [_ssh(args, start)]


def logs(args) -> list[list[str]]:
  return [["mkdir", "-p", args.dest], _scp(args, f"{args.name}:{_log_dir(args).removeprefix('~/')}/*.log", args.dest)]


def stop(args) -> list[list[str]]:
  return [_ssh(args, f"kill -TERM $(cat {_log_dir(args)}/$(hostname).pid)")]


def delete(args) -> list[list[str]]:
  if args.num_slices == 1:
    return [_group(args) + ["delete", args.name, *_location(args), "--quiet"]]
  return [_group(args) + ["delete", args.name, *_location(args), "--force", "--quiet"]]


def _parser() -> argparse.ArgumentParser:
  shared = argparse.ArgumentParser(add_help=False)
  shared.add_argument("--name", required=True, help="the TPU VM (or queued resource) name")
  shared.add_argument("--zone", required=True)
  shared.add_argument("--project", default=None, help="default: gcloud's configured project")
  shared.add_argument("--num-slices", type=common.positive, default=1, help="slices over the data-centre network")
  common.add_dry_run_arg(shared)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  actions = parser.add_subparsers(dest="action", required=True)
  p = actions.add_parser("create", parents=[shared], help="create the TPU VM (queued resource for several slices)")
  p.add_argument("--accelerator", type=common.tpu_type, required=True, help="e.g. v5p-64, v5litepod-256, v6e-256")
  p.add_argument("--version", default=None, help="TPU runtime version (default: the accelerator's usual one)")
  p.add_argument("--spot", action="store_true")
  for name, text in (("run", "set up every worker and start the training command"),
                     ("logs", "copy every worker's log here"), ("stop", "SIGTERM the run: it checkpoints and exits")):
    p = actions.add_parser(name, parents=[shared], help=text)
    p.add_argument("--run", required=True, help="run name: logs go to ~/jaxspeech-runs/<run>/ on the workers")
  p = actions.choices["run"]
  p.add_argument("--repo", default=None, help="git URL to clone on the workers (with --branch)")
  p.add_argument("--branch", default=None, help="branch of --repo; default: ship the local checkout's HEAD")
  p.add_argument("--no-setup", action="store_true", help="the workers are already set up; only start the command")
  common.add_command_args(p)
  actions.choices["logs"].add_argument("--dest", required=True, help="local folder for the logs")
  actions.add_parser("delete", parents=[shared], help="delete the TPU VM or queued resource")
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  plans = {"create": create, "logs": logs, "stop": stop, "delete": delete}
  commands = run(args, parser) if args.action == "run" else plans[args.action](args)
  return common.execute(commands, args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
