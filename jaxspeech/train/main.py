"""`jaxspeech train|eval --config=configs/<family>.py:<variant> --workdir=DIR [--config.a.b=value ...]`."""

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file and variant, e.g. configs/ast.py:tiny",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and TensorBoard logs go")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs "
                                   "outside TPU VMs and SLURM (else JAXSPEECH_COORDINATOR_ADDRESS)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the job (else JAXSPEECH_NUM_PROCESSES)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (else JAXSPEECH_PROCESS_ID)")
_INIT_TIMEOUT = flags.DEFINE_integer("init_timeout", 300, "seconds to wait for every process to join")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer("heartbeat_timeout", 100, "seconds before a silent process counts as dead")
flags.mark_flags_as_required(["config", "workdir"])


def _run(command: str) -> None:
  from jaxspeech.train import trainer  # after flag parsing: importing JAX reads XLA flags
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  from jaxspeech.train import distributed
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _INIT_TIMEOUT.value,
                           _HEARTBEAT_TIMEOUT.value)
    if command == "train":
      result = trainer.Trainer(cfg, workdir).train()
    else:
      result = trainer.evaluate(cfg, workdir)
  except (trainer.TrainingError, FileNotFoundError, KeyError, ValueError, ConnectionError) as e:
    print(f"jaxspeech {command}: error: {e}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # pylint: disable=broad-except
    distributed.exit_if_peer_lost(f"jaxspeech {command}", e)
    raise
  if result:
    print(f"{command} done: " + "  ".join(f"eval/{k} {v:.4f}" for k, v in sorted(result.items())))


def _parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with config errors (a bad variant, an unknown or mistyped override) as one clear line."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.get("family")  # a config file that failed to load raises only when used
    return rest
  except Exception as e:  # pylint: disable=broad-except
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    message = lines[-1] if "Traceback" in str(e) else " ".join(lines)
    missing = re.fullmatch(r"\"?'(\w+)'\"?", message)  # ml_collections names only the missing key
    if missing:
      overrides = [a.split("=")[0] for a in argv if a.startswith("--config.") and
                   a.split("=")[0].endswith("." + missing.group(1))]
      message = f"no config field {overrides[0] if overrides else missing.group(1)!r} in the config file"
    print(f"{argv[0]}: error: {message}", file=sys.stderr)
    sys.exit(2)


def run(command: str, argv: list[str]) -> None:
  app.run(lambda _: _run(command), argv=[f"jaxspeech {command}"] + list(argv), flags_parser=_parse_flags)
