"""Starting JAX's multi-controller runtime: one process per host (or per GPU), one program.

Explicit settings come from flags or the environment (`JAXSPEECH_COORDINATOR_ADDRESS`,
`JAXSPEECH_NUM_PROCESSES`, `JAXSPEECH_PROCESS_ID`, as `launch/local.py` sets them). Without them,
TPU VMs and SLURM jobs are detected by JAX itself; anything else runs as a single process.
"""

import os
import sys

import jax

# words of the runtime errors a collective or the coordination service raises when a peer process is gone
_LOST_PEER = ("closed by peer", "heartbeat", "unhealthy", "UNAVAILABLE", "Barrier", "Connection reset")


def _auto_cluster() -> bool:
  """A multi-process TPU slice or SLURM job, which `jax.distributed.initialize()` configures itself."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300, heartbeat_timeout_s: int = 100) -> None:
  """Joins the job's processes. A process that cannot reach the others within `timeout_s` fails with
  a message naming the coordinator; a process that dies is noticed by the rest within about
  `heartbeat_timeout_s`, and they exit with an error instead of hanging."""
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAXSPEECH_COORDINATOR_ADDRESS")
  num_processes = num_processes or int(env.get("JAXSPEECH_NUM_PROCESSES", "0")) or None
  if process_id is None and "JAXSPEECH_PROCESS_ID" in env:
    process_id = int(env["JAXSPEECH_PROCESS_ID"])
  explicit = coordinator_address is not None
  if not explicit and not _auto_cluster():
    return
  if explicit and (num_processes is None or process_id is None):
    raise ValueError("a coordinator address needs --num_processes and --process_id "
                     "(or JAXSPEECH_NUM_PROCESSES and JAXSPEECH_PROCESS_ID)")
  if jax.config.jax_platforms in (None, "", "cpu") and explicit:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over TCP
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id, initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
  except Exception as e:  # pylint: disable=broad-except
    where = coordinator_address or "the coordinator JAX detected"
    raise ConnectionError(f"process {process_id} could not join the job at {where} within {timeout_s} s "
                       f"({num_processes} processes expected; is every host started?): {e}") from e


def exit_if_peer_lost(program: str, error: Exception) -> None:
  """Exits 2 with one line when `error` is a collective that failed because another process of the job died;
  returns otherwise. `os._exit`, because JAX's exit-time shutdown would wait on the dead peer and then abort
  the process with a C++ stack trace."""
  if jax.process_count() == 1 or not isinstance(error, jax.errors.JaxRuntimeError):
    return
  text = str(error)
  if not any(word in text for word in _LOST_PEER):
    return
  print(f"{program}: error: process {jax.process_index()} of {jax.process_count()}: {text.strip().splitlines()[0]}; "
        "another process of the job died or was stopped: see its log", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(2)
