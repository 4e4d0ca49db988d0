"""What guards a workdir against a second writer: an exclusive lock held for the whole run.

`workdir/lock` names its holder (host, pid, start time). The lock is the kernel's (`flock`), so it goes with
its process: a trainer that was killed leaves a file whose stale holder the next run simply takes over.
Only process 0 of a multi-host job takes it (the others share its workdir or have their own).
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket


class WorkdirInUse(RuntimeError):
  """Another live process holds the workdir."""


@contextlib.contextmanager
def lock(workdir: str, take: bool = True):
  """Holds `workdir/lock` until the block ends; raises WorkdirInUse (naming the holder) if another process has it."""
  if not take:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirInUse(f"workdir {workdir} is in use by {_holder(fd)}; stop that run or use another "
                         "--workdir") from None
    holder = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
  try:
    holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    return f"pid {holder['pid']} on {holder['host']} (since {holder['since']})"
  except (ValueError, KeyError):
    return "another process"
