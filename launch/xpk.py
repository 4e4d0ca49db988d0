"""GKE clusters through xpk: one `xpk workload create` for a TPU or GPU training job.

  python launch/xpk.py --cluster c1 --workload ast-base --tpu-type v5p-64 --num-slices 2 \\
      --docker-image gcr.io/P/jaxspeech:latest -- \\
      jaxspeech train --config=configs/ast.py:base --workdir=gs://bucket/ast_base
  python launch/xpk.py --cluster a3 --workload ast-gpu --device-type h100-80gb-8 --num-nodes 8 \\
      --docker-image gcr.io/P/jaxspeech:gpu -- jaxspeech train ...

The image must hold jaxspeech and the configs (`--base-docker-image` instead makes xpk build one from the
current folder on top of that image). TPU slices need nothing more: JobSet gives every pod its MEGASCALE_*
variables and JAX finds the others; with several slices the command gets `--config.mesh.dcn_data=N`. On GPU
node pools xpk sets JAX_COORDINATOR_ADDRESS/JAX_COORDINATOR_PORT, NNODES and NODE_RANK, which the command
hands to `jaxspeech train` as JAXSPEECH_*, along with the H100 XLA flags of launch/common.py.
"""

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (launch/ is a folder of scripts, not a package)

# xpk's GPU device types: A3 High, A3 Mega, A3 Ultra, A4.
GPU_DEVICE_TYPES = ("h100-80gb-8", "h100-mega-80gb-8", "h200-141gb-8", "b200-8")
GPU_JOIN = ("export JAXSPEECH_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS:$JAX_COORDINATOR_PORT "
            "JAXSPEECH_NUM_PROCESSES=$NNODES JAXSPEECH_PROCESS_ID=$NODE_RANK && ")


def gpu_device_type(value: str) -> str:
  if value not in GPU_DEVICE_TYPES:
    raise argparse.ArgumentTypeError(f"unknown GPU device type {value!r}; xpk knows {', '.join(GPU_DEVICE_TYPES)}")
  return value


def workload_create(args, parser) -> list[str]:
  gpu = args.device_type is not None
  if gpu and args.num_slices != 1:
    parser.error("--num-slices is for TPUs; GPU jobs size with --num-nodes")
  if not gpu and args.num_nodes is not None:
    parser.error("--num-nodes is for GPU device types; TPU jobs size with --tpu-type and --num-slices")
  command = common.train_command(parser, args.command, args.num_slices)
  env = common.gpu_env(args.xla_flags) + args.env if gpu else args.env
  remote = (GPU_JOIN if gpu else "") + common.shell_env(env) + shlex.join(command)
  argv = ["xpk", "workload", "create", f"--cluster={args.cluster}", f"--workload={args.workload}"]
  argv += [f"--project={args.project}"] if args.project else []
  argv += [f"--zone={args.zone}"] if args.zone else []
  if gpu:
    argv += [f"--device-type={args.device_type}", f"--num-nodes={args.num_nodes or 1}"]
  else:
    argv += [f"--tpu-type={args.tpu_type}", f"--num-slices={args.num_slices}"]
  argv += [f"--docker-image={args.docker_image}" if args.docker_image else
           f"--base-docker-image={args.base_docker_image}"]
  argv += ([f"--priority={args.priority}"] if args.priority else [])
  return argv + ["--command", remote]


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cluster", required=True)
  parser.add_argument("--workload", required=True, help="workload name (lowercase letters, digits, '-')")
  parser.add_argument("--project", default=None)
  parser.add_argument("--zone", default=None)
  kind = parser.add_mutually_exclusive_group(required=True)
  kind.add_argument("--tpu-type", type=common.tpu_type, help="e.g. v5p-64, v5litepod-256, v6e-256")
  kind.add_argument("--device-type", type=gpu_device_type, help=f"GPU nodes: {', '.join(GPU_DEVICE_TYPES)}")
  parser.add_argument("--num-slices", type=common.positive, default=1, help="TPU slices over the data-centre network")
  parser.add_argument("--num-nodes", type=common.positive, default=None, help="GPU nodes (8 GPUs each)")
  image = parser.add_mutually_exclusive_group(required=True)
  image.add_argument("--docker-image", help="an image with jaxspeech installed and its configs")
  image.add_argument("--base-docker-image", help="xpk builds an image from this folder on top of it")
  parser.add_argument("--priority", default=None, choices=("very-low", "low", "medium", "high", "very-high"))
  common.add_dry_run_arg(parser)
  common.add_command_args(parser, gpu=True)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  return common.execute([workload_create(args, parser)], args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
