"""What guards a workdir against a second writer: an exclusive lock held for the whole run.

`workdir/lock` names its holder (host, pid, start time). On a local disk the lock is the kernel's (`flock`),
so it goes with its process: a trainer that was killed leaves a file whose stale holder the next run simply
takes over. A bucket has no locks, so there it is a lease: the holder rewrites its `heartbeat` every
`HEARTBEAT` seconds, a second trainer refuses while the heartbeat is younger than `LEASE` seconds, and takes
over a lease that old (its holder is dead), or at once one whose holder was on this host and has exited. Two trainers starting within the same second can both read "no
holder"; each reads the lease back after writing it and the one whose token is gone stops.
Only process 0 of a multi-host job takes it (the others share its workdir or have their own).
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
import time
import uuid

from jaxspeech import storage

HEARTBEAT = 10.0
LEASE = 60.0


class WorkdirInUse(RuntimeError):
  """Another live process holds the workdir."""


def _holder() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _name(holder: dict) -> str:
  try:
    return f"pid {holder['pid']} on {holder['host']} (since {holder['since']})"
  except KeyError:
    return "another process"


@contextlib.contextmanager
def lock(workdir: str, take: bool = True):
  """Holds `workdir/lock` until the block ends; raises WorkdirInUse (naming the holder) if another process has it."""
  if not take:
    yield
    return
  workdir = storage.resolve(workdir)
  storage.makedirs(workdir)
  with (_lease if storage.is_remote(workdir) else _flock)(workdir):
    yield


@contextlib.contextmanager
def _flock(workdir: str):
  fd = os.open(os.path.join(workdir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirInUse(f"workdir {workdir} is in use by {_name(_read_fd(fd))}; stop that run or use another "
                         "--workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder()).encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock


def _read_fd(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0) or b"{}")
  except ValueError:
    return {}


def _read(path: str) -> dict:
  try:
    return json.loads(storage.read_text(path))
  except (FileNotFoundError, ValueError):
    return {}


def _dead_here(holder: dict) -> bool:
  """A holder on this host whose process has exited (a run killed here and restarted at once)."""
  if holder.get("host") != socket.gethostname():
    return False
  try:
    os.kill(int(holder["pid"]), 0)
  except ProcessLookupError:
    return True
  except (PermissionError, KeyError, ValueError):
    return False
  return False


@contextlib.contextmanager
def _lease(workdir: str):
  path = storage.join(workdir, "lock")
  held = _read(path)
  age = time.time() - held.get("heartbeat", 0.0)
  if held and age < LEASE and not _dead_here(held):
    raise WorkdirInUse(f"workdir {workdir} is in use by {_name(held)}, whose lease was renewed {age:.0f} s ago; "
                       f"stop that run or use another --workdir (a dead holder's lease lapses {LEASE:.0f} s after "
                       "its last heartbeat)")
  if held:
    print(f"taking over the lease of {_name(held)} on {workdir}: "
          + ("that process is gone" if _dead_here(held) else f"its last heartbeat was {age:.0f} s ago"))
  mine = {**_holder(), "token": uuid.uuid4().hex, "heartbeat": time.time()}
  storage.write_text(path, json.dumps(mine))
  if _read(path).get("token") != mine["token"]:
    raise WorkdirInUse(f"workdir {workdir} was taken by {_name(_read(path))} as this run started; use another "
                       "--workdir")
  stop = threading.Event()

  def renew():
    while not stop.wait(HEARTBEAT):
      if _read(path).get("token") != mine["token"]:
        return
      storage.write_text(path, json.dumps({**mine, "heartbeat": time.time()}))

  thread = threading.Thread(target=renew, name="jaxspeech-lease", daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    if _read(path).get("token") == mine["token"]:
      storage.remove(path)
