"""Simulates a pod on one machine: N JAX processes on 127.0.0.1, each with fake CPU devices.

  python launch/local.py --num-processes 2 --devices-per-process 4 -- \\
      jaxspeech train --config=configs/ast.py:tiny --workdir=workdirs/ast_2x4

Each process gets `JAXSPEECH_{COORDINATOR_ADDRESS,NUM_PROCESSES,PROCESS_ID}`, so `jaxspeech train`
joins them with `jax.distributed.initialize`. Output lines are prefixed with the process id. When a
process fails, the others get `--grace` seconds to exit on their own (JAX's heartbeat notices a
dead peer), then are killed; the exit code is the first failure's. `--dry-run` prints each process's
command, with the variables it gets, as a shell line, and runs nothing.
"""

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading
import time


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pump(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, ""):
    out.write(f"{prefix}{line}")
    out.flush()


def process_env(i: int, num_processes: int, devices_per_process: int, address: str) -> dict[str, str]:
  """The variables process `i` gets on top of this environment."""
  return {"JAX_PLATFORMS": "cpu", "JAXSPEECH_COORDINATOR_ADDRESS": address,
          "JAXSPEECH_NUM_PROCESSES": str(num_processes), "JAXSPEECH_PROCESS_ID": str(i),
          "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                       f"--xla_force_host_platform_device_count={devices_per_process}".strip()}


def dry_run(command: list[str], num_processes: int, devices_per_process: int, port: int | None = None) -> int:
  """Prints each process's `env K=V ... COMMAND` line."""
  address = f"127.0.0.1:{port or _free_port()}"
  for i in range(num_processes):
    env = process_env(i, num_processes, devices_per_process, address)
    print(shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *command]))
  return 0


def launch(command: list[str], num_processes: int, devices_per_process: int, grace: float = 60.0,
           port: int | None = None) -> int:
  address = f"127.0.0.1:{port or _free_port()}"
  procs, pumps = [], []
  for i in range(num_processes):
    env = {**os.environ, **process_env(i, num_processes, devices_per_process, address)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs.append(proc)
    pumps.append(threading.Thread(target=_pump, args=(proc.stdout, f"[{i}] ", sys.stdout), daemon=True))
    pumps[-1].start()
  failed_at, code = None, 0
  while any(p.poll() is None for p in procs):
    bad = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if bad and failed_at is None:
      failed_at, code = time.monotonic(), bad[0]
    if failed_at is not None and time.monotonic() - failed_at > grace:
      for p in procs:
        if p.poll() is None:
          print(f"[launch] process {procs.index(p)} still running {grace:.0f} s after a failure; killing it",
                file=sys.stderr)
          p.kill()
    time.sleep(0.1)
  for t in pumps:
    t.join(timeout=5)
  return code or next((p.returncode for p in procs if p.returncode), 0)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num-processes", type=int, default=2)
  parser.add_argument("--devices-per-process", type=int, default=4)
  parser.add_argument("--grace", type=float, default=60.0, help="seconds the others get after one process fails")
  parser.add_argument("--port", type=int, default=None)
  parser.add_argument("--dry-run", action="store_true", help="print each process's command instead of running it")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command each process runs")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --, e.g. -- jaxspeech train --config=...")
  if args.dry_run:
    return dry_run(command, args.num_processes, args.devices_per_process, args.port)
  return launch(command, args.num_processes, args.devices_per_process, args.grace, args.port)


if __name__ == "__main__":
  sys.exit(main())
