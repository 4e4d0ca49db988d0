"""Multi-host training, for real: several JAX processes on 127.0.0.1 joined by jax.distributed (gloo)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers import OVERRIDES, ROOT

LAUNCH = [sys.executable, os.path.join(ROOT, "launch", "local.py")]


def _train(workdir, corpus_path, *extra):
  return [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/ast.py:tiny", f"--workdir={workdir}",
          f"--config.data.path={corpus_path}", *OVERRIDES, "--config.train.checkpoint_every=3",
          "--config.train.steps=3", *extra]


def _env(devices):
  return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l)["loss"] for l in f if '"loss"' in l]


@pytest.mark.slow
def test_two_processes_match_one_and_checkpoints_move_between_them(corpus_path, tmp_path):
  two = subprocess.run(LAUNCH + ["--num-processes", "2", "--devices-per-process", "4", "--"]
                       + _train(tmp_path / "two", corpus_path), cwd=ROOT, env=_env(4), capture_output=True,
                       text=True, timeout=300)
  assert two.returncode == 0, two.stdout[-3000:]
  one = subprocess.run(_train(tmp_path / "one", corpus_path), cwd=ROOT, env=_env(8), capture_output=True,
                       text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]
  # Same global batches (hosts split one stream); only the order of fp32 sums differs.
  np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=0, atol=1e-5)
  assert len(_losses(tmp_path / "two")) == 3  # process 0 alone writes metrics
  data_files = sorted(f for f in os.listdir(tmp_path / "two" / "checkpoints" / "3" / "data") if f.endswith(".json"))
  assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]

  # The 2-process checkpoint resumes in 1 process on another mesh.
  resumed = subprocess.run(_train(tmp_path / "two", corpus_path, "--config.train.steps=4", "--config.mesh.data=2",
                                  "--config.mesh.tensor=4"), cwd=ROOT, env=_env(8), capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "data stream starts from its beginning" in resumed.stdout
  state = ocp.StandardCheckpointer().restore(tmp_path / "two" / "checkpoints" / "4" / "state")
  assert int(state["step"]) == 4 and all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def _process(index, workdir):
  """The pid of the training process with JAXSPEECH_PROCESS_ID=index for `workdir`."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read()
      with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read().split(b"\0")
    except OSError:
      continue
    if b"jaxspeech.cli" in cmdline and f"--workdir={workdir}".encode() in cmdline and \
        f"JAXSPEECH_PROCESS_ID={index}".encode() in environ:
      return int(pid)
  raise AssertionError(f"no process {index} for {workdir}")


def test_killing_one_process_makes_the_other_exit(corpus_path, tmp_path):
  proc = subprocess.Popen(LAUNCH + ["--num-processes", "2", "--devices-per-process", "2", "--grace", "120", "--"]
                          + _train(tmp_path, corpus_path, "--config.train.steps=100000", "--heartbeat_timeout=10"),
                          cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  deadline = time.time() + 240
  while not (tmp_path / "metrics.jsonl").exists():
    assert time.time() < deadline and proc.poll() is None, "training never started"
    time.sleep(0.1)
  victim = _process(1, tmp_path)
  os.kill(victim, signal.SIGKILL)
  start = time.time()
  out, _ = proc.communicate(timeout=200)
  # The survivor notices its dead peer by itself (no launcher kill) and fails, well within the grace period.
  assert proc.returncode == 2, out[-3000:]
  assert "still running" not in out, out[-2000:]
  said = [line for line in out.splitlines() if line.startswith("[0] jaxspeech train: error: process 0 of 2: ")]
  assert len(said) == 1 and "another process of the job died" in said[0], out[-3000:]
  assert "Traceback" not in out and "stack trace" not in out, out[-3000:]
  assert time.time() - start < 120
