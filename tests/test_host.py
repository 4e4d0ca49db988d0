"""`jaxspeech train|eval` re-executes itself under glibc malloc tunables (jaxspeech/train/host.py)."""

import os
import subprocess
import sys

import pytest

from jaxspeech import cli
from jaxspeech.train import host


@pytest.mark.parametrize("environ,expected", [
    ({}, True),
    ({"JAXSPEECH_MALLOC_TUNING": "0"}, False),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, False),
])
def test_wants_malloc_tuning(environ, expected):
  assert host.wants_malloc_tuning(environ) is expected


def test_train_reexecs_with_tunables(monkeypatch):
  calls = []
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv("JAXSPEECH_MALLOC_TUNING", raising=False)
  monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append((path, args, env)) or sys.exit(0))
  with pytest.raises(SystemExit):
    cli.main(["train", "--config=configs/ast.py:tiny", "--workdir=/tmp/w"])
  (path, args, env), = calls
  assert path == sys.executable
  assert args == [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/ast.py:tiny", "--workdir=/tmp/w"]
  assert env["GLIBC_TUNABLES"] == host.MALLOC_TUNABLES


def test_reexec_runs_the_same_command_with_tunables(tmp_path):
  """The real exec: the re-executed CLI sees the tunables (it reports a bad override, after the exec)."""
  probe = ("import os, sys; from jaxspeech.train import host; "
           "print('tunables', os.environ.get('GLIBC_TUNABLES'), flush=True); "
           "host.reexec_with_malloc_tuning(['-m', 'jaxspeech.cli', *sys.argv[1:]])")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXSPEECH_MALLOC_TUNING")}
  out = subprocess.run([sys.executable, "-c", probe, "eval", "--config=configs/ast.py:tiny",
                        f"--workdir={tmp_path}", "--config.no_such_field=1"],
                       capture_output=True, text=True, env=env, timeout=300)
  assert out.stdout.splitlines()[0] == "tunables None"
  assert "no config field '--config.no_such_field'" in out.stderr
  assert out.returncode == 2
