"""What the cluster launchers share: argument types, the train command, and printing or running commands.

A launcher builds its whole plan as a list of argv lists first; `--dry-run` prints them (one shell line
each, quoted as a shell needs them) and stops, otherwise they run in order and the first failure stops
the rest.
"""

import argparse
import re
import shlex
import subprocess
import sys

# gcloud's accelerator types: v4 and v5p count TensorCores, v5litepod (v5e) and v6e count chips.
TPU_TYPE = re.compile(r"(v4|v5p|v5litepod|v6e)-([1-9]\d*)")
TPU_RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
                "v6e": "v2-alpha-tpuv6e"}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def tpu_type(value: str) -> str:
  if not TPU_TYPE.fullmatch(value):
    raise argparse.ArgumentTypeError(
        f"unknown TPU accelerator {value!r}; use v4-N, v5p-N, v5litepod-N or v6e-N (e.g. v5p-64)")
  return value


def env_pair(value: str) -> tuple[str, str]:
  name, sep, text = value.partition("=")
  if not sep or not ENV_NAME.fullmatch(name):
    raise argparse.ArgumentTypeError(f"--env takes NAME=VALUE, got {value!r}")
  return name, text


def positive(value: str) -> int:
  number = int(value)
  if number < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
  return number


def add_dry_run_arg(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")


def add_command_args(parser: argparse.ArgumentParser, gpu: bool = False) -> None:
  """`--env NAME=VALUE` (repeatable), `--xla-flags` for GPUs, and the training command after `--`."""
  if gpu:
    parser.add_argument("--xla-flags", default="",
                        help='XLA flags after the H100 defaults (write --xla-flags="--a=1 --b=2")')
  parser.add_argument("--env", type=env_pair, action="append", default=[], metavar="NAME=VALUE",
                      help="an environment variable for the training processes (repeatable)")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="-- then the training command, e.g. -- jaxspeech train --config=... --workdir=...")


def train_command(parser: argparse.ArgumentParser, command: list[str], num_slices: int = 1) -> list[str]:
  """The command after `--`; with several slices, data parallelism across them (`mesh.dcn_data`)
  unless the command already sets a `dcn_` axis."""
  command = command[1:] if command[:1] == ["--"] else list(command)
  if not command:
    parser.error("give the training command after --, e.g. -- jaxspeech train --config=configs/ast.py:tiny "
                 "--workdir=gs://bucket/run")
  if num_slices > 1 and not any(a.startswith("--config.mesh.dcn_") for a in command):
    command.append(f"--config.mesh.dcn_data={num_slices}")
  return command


def shell_env(env: list[tuple[str, str]]) -> str:
  """`export A=1 B=2 && ` for a remote shell line, or '' when there is nothing to export."""
  return f"export {' '.join(f'{k}={shlex.quote(v)}' for k, v in env)} && " if env else ""


# XLA and NCCL settings for H100/H200 hosts. Sources: NVIDIA JAX-Toolbox "Tips for High-Performance LLMs with
# JAX and XLA" (rosetta/docs/GPU_performance.md) and JAX's GPU performance tips
# (docs.jax.dev/en/latest/gpu_performance_tips.html); the combine thresholds are those of MaxText's A3 GPU
# scripts. Every flag parses in the pinned jaxlib (tests/test_launch.py checks).
GPU_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",       # overlap collectives with compute
    "--xla_gpu_enable_highest_priority_async_stream=true",  # collectives on a high-priority stream
    "--xla_gpu_enable_command_buffer=",                     # no CUDA graphs (MaxText's GPU runs turn them off)
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_all_gather_combine_threshold_bytes=1073741824",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=33554432",
    "--xla_gpu_enable_pipelined_all_gather=true",           # FSDP: prefetch the next layer's params
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
)
# JAX-Toolbox: give XLA 90% of HBM (the rest is for cuDNN/NCCL workspaces). NCCL_NVLS_ENABLE stays at NCCL's
# default: JAX-Toolbox dropped its NCCL_NVLS_ENABLE=0 (NVIDIA/JAX-Toolbox#1708); pass --env to set it.
GPU_ENV = (("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9"),)


def gpu_env(extra_xla_flags: str = "") -> list[tuple[str, str]]:
  return [("XLA_FLAGS", " ".join(GPU_XLA_FLAGS + tuple(extra_xla_flags.split()))), *GPU_ENV]


def execute(commands: list[list[str]], dry_run: bool) -> int:
  """Dry run: prints each command. Otherwise runs them in order, echoing each to stderr first."""
  for argv in commands:
    if dry_run:
      print(shlex.join(argv))
      continue
    print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
    try:
      code = subprocess.run(argv, check=False).returncode
    except FileNotFoundError:
      print(f"launch: {argv[0]} is not on PATH", file=sys.stderr)
      return 127
    if code:
      print(f"launch: command failed with exit code {code}: {shlex.join(argv)}", file=sys.stderr)
      return code
  return 0
