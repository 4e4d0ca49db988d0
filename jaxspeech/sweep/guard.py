"""`python -m jaxspeech.sweep.guard PARENT_PID CMD...`: runs CMD, which gets SIGTERM if PARENT_PID dies.

The sweep runner starts each `jaxspeech train` through this, so a runner killed outright (SIGKILL, a
lost terminal) takes its runs down with it: SIGTERM makes the trainer save a checkpoint and exit,
and the rerun resumes the run. (Linux `prctl(PR_SET_PDEATHSIG)`; it survives the exec. Elsewhere
the command just runs.)
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
  parent, command = int(argv[0]), argv[1:]
  if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
      sys.exit(143)
  os.execvp(command[0], command)


if __name__ == "__main__":
  main(sys.argv[1:])
