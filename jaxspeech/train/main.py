"""`jaxspeech train|eval --config=configs/<family>.py:<variant> --workdir=DIR [--config.a.b=value ...]`."""

import argparse
import functools
import os
import sys

from absl import logging

from jaxspeech.train import config as config_lib, distributed, trainer

HELP = {"train": "train a model (resumes the workdir's newest checkpoint)",
        "eval": "evaluate a workdir's newest checkpoint on the config's eval split"}


def add_parser(groups) -> None:
  for command, text in HELP.items():
    p = groups.add_parser(command, help=text, description=f"{text}.", epilog=config_lib.OVERRIDES_HELP)
    config_lib.add_argument(p)
    p.add_argument("--workdir", required=True, help="where checkpoints, metrics and TensorBoard logs go")
    g = p.add_argument_group("several processes (outside TPU VMs and SLURM, which need none of these)")
    g.add_argument("--coordinator_address", "--coordinator-address", default=None,
                   help="host:port of process 0 (else JAXSPEECH_COORDINATOR_ADDRESS)")
    g.add_argument("--num_processes", "--num-processes", type=int, default=None,
                   help="processes in the job (else JAXSPEECH_NUM_PROCESSES)")
    g.add_argument("--process_id", "--process-id", type=int, default=None,
                   help="this process's index (else JAXSPEECH_PROCESS_ID)")
    g.add_argument("--init_timeout", "--init-timeout", type=int, default=300,
                   help="seconds to wait for every process to join")
    g.add_argument("--heartbeat_timeout", "--heartbeat-timeout", type=int, default=100,
                   help="seconds before a silent process counts as dead")
    p.add_argument("--verbosity", type=int, default=-1, help="absl logging: -1 warnings (default), 0 info, 1 debug")
    p.set_defaults(run=functools.partial(run, command), config_overrides=True)


def run(command: str, args: argparse.Namespace) -> int:
  logging.set_verbosity(args.verbosity)  # the default hides Orbax's INFO line for every save
  try:
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id, args.init_timeout,
                           args.heartbeat_timeout)
    if command == "train":
      result = trainer.Trainer(args.config, args.workdir).train()
    else:
      result = trainer.evaluate(args.config, args.workdir)
  except trainer.OutOfSpace as e:
    print(f"jaxspeech {command}: error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)  # past the writers' exit handlers (TensorBoard's, Orbax's threads), which would meet the full disk again
  except (trainer.TrainingError, FileNotFoundError, KeyError, ValueError, ConnectionError) as e:
    print(f"jaxspeech {command}: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    distributed.exit_if_peer_lost(f"jaxspeech {command}", e)
    raise
  if result:
    print(f"{command} done: " + "  ".join(f"eval/{k} {v:.4f}" for k, v in sorted(result.items())))
  return 0
