"""Workdirs on Google Cloud Storage, against a real local server (gcp-storage-emulator), and the one-line
refusals of storage jaxspeech cannot use (issue #18).

The emulator is reached the way a user reaches GCS: gcsfs, google-cloud-storage and tensorstore each read their
own endpoint setting (STORAGE_EMULATOR_HOST, TENSORSTORE_GCS_HTTP_URL); nothing in jaxspeech knows of it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from jaxspeech import storage
from jaxspeech.workdir import Workdir, lock
from tests.helpers import OVERRIDES, ROOT

BUCKET = "jaxspeech-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A GCS emulator with one bucket, its endpoint in this process's and its children's environment."""
  port = _free_port()
  log = tmp_path_factory.mktemp("gcs") / "emulator.log"
  with open(log, "w") as out:
    server = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                               f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}"],
                              stdout=out, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_CLOUD_PROJECT": "test",
         "GCE_METADATA_HOST": "127.0.0.1:1",  # no metadata server: credentials lookups fail at once
         # the emulator answers concurrent conditional writes of one object (OCDBT's manifest) with a generation
         # tensorstore cannot parse ("Malformed StorageGeneration"); GCS itself serialises them
         "TENSORSTORE_GCS_REQUEST_CONCURRENCY": "1"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  deadline = time.time() + 180  # a cold import on a loaded CI machine took more than 10 s
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
      break
    except OSError:
      assert server.poll() is None and time.time() < deadline, f"the emulator did not start:\n{log.read_text()}"
      time.sleep(0.2)
  yield f"gs://{BUCKET}"
  server.kill()
  server.wait()
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def _train(workdir, corpus_path, *extra, log=None):
  cmd = [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/ast.py:tiny", f"--workdir={workdir}",
         f"--config.data.path={corpus_path}", *OVERRIDES, "--config.train.steps=8",
         "--config.train.checkpoint_every=4", "--config.train.eval_every=4", *extra]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  if log is not None:  # a file, not a pipe: a pipe nobody reads would stall the run once full
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def _params(workdir, step):
  return jax.tree.leaves(ocp.StandardCheckpointer().restore(storage.join(workdir, "checkpoints", str(step),
                                                                         "state"))["params"])


@pytest.mark.slow
@pytest.mark.xfail(raises=AssertionError, strict=False, reason=(
    "gcp-storage-emulator answers some of OCDBT's conditional manifest writes with a generation tensorstore "
    "rejects ('Malformed StorageGeneration'), so the save fails on the emulator in most runs; one in three passed"))
def test_a_run_killed_on_a_bucket_resumes_to_the_params_of_an_uninterrupted_local_run(gcs, corpus_path, tmp_path):
  """SIGKILL once checkpoint 4 is in the bucket, then the same command: the params at step 8 equal a local
  uninterrupted run's bit for bit; config, metrics (each step once), TensorBoard events and eval live in the
  bucket, and the lease is gone after the run."""
  local = str(tmp_path / "local")
  assert _train(local, corpus_path).returncode == 0
  remote = f"{gcs}/ast_run"
  log = open(tmp_path / "killed.log", "w")
  run = _train(remote, corpus_path, log=log)
  deadline = time.time() + 300
  while not Workdir(remote).steps() and run.poll() is None and time.time() < deadline:
    time.sleep(0.5)
  run.send_signal(signal.SIGKILL)
  run.wait()
  log.close()
  assert Workdir(remote).steps() == [4], (tmp_path / "killed.log").read_text()[-3000:]
  resumed = _train(remote, corpus_path)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert Workdir(remote).steps() == [4, 8]
  for a, b in zip(_params(local, 8), _params(remote, 8), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  steps = [json.loads(line)["step"] for line in storage.read_text(f"{remote}/metrics.jsonl").splitlines()]
  assert sorted(set(steps)) == list(range(1, 9)) and len(steps) == len(set(steps)) + 2  # 2 evals: steps 4, 8
  assert Workdir(remote).config["family"] == "ast"
  assert any(name.startswith("events.out.tfevents") for name in storage.listdir(f"{remote}/tb"))
  assert not storage.exists(f"{remote}/lock")
  evaluated = subprocess.run(
      [sys.executable, "-m", "jaxspeech.cli", "eval", "--config=configs/ast.py:tiny", f"--workdir={remote}",
       f"--config.data.path={corpus_path}", *OVERRIDES], cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
      capture_output=True, text=True, timeout=600, check=False)
  assert evaluated.returncode == 0 and "accuracy" in evaluated.stdout + evaluated.stderr, evaluated.stderr
  assert Workdir(remote).read_params("ast").step == 8


def test_a_live_lease_refuses_a_second_trainer_and_a_stale_one_is_taken_over(gcs, capsys):
  workdir = f"{gcs}/leased"
  path = f"{workdir}/lock"
  epath.Path(path).write_text(json.dumps({"host": "elsewhere", "pid": 7, "since": "then", "heartbeat": time.time()}))
  with pytest.raises(lock.WorkdirInUse, match="in use by pid 7 on elsewhere"):
    with lock.lock(workdir):
      pass
  epath.Path(path).write_text(json.dumps({"host": "elsewhere", "pid": 7, "since": "then",
                                          "heartbeat": time.time() - lock.LEASE - 1}))
  with lock.lock(workdir):
    held = json.loads(epath.Path(path).read_text())
    assert held["pid"] == os.getpid()
  assert "taking over the lease of pid 7 on elsewhere" in capsys.readouterr().out
  assert not storage.exists(path)


def test_the_lease_is_renewed_while_it_is_held(gcs, monkeypatch):
  monkeypatch.setattr(lock, "HEARTBEAT", 0.2)
  workdir = f"{gcs}/renewed"
  with lock.lock(workdir):
    first = json.loads(storage.read_text(f"{workdir}/lock"))["heartbeat"]
    time.sleep(1.5)
    assert json.loads(storage.read_text(f"{workdir}/lock"))["heartbeat"] > first


def test_workdir_files_round_trip_on_the_bucket(gcs):
  workdir = Workdir(f"{gcs}/files/")
  assert workdir.path == f"{gcs}/files"
  workdir.write_config({"family": "ast", "model": {"layers": 1}}, provenance={"source": "test"})
  assert workdir.config == {"family": "ast", "model": {"layers": 1}}
  assert workdir.provenance == {"source": "test"}
  assert workdir.steps() == []


@pytest.mark.slow
@pytest.mark.parametrize("path,words", [
    ("s3://bucket/run", "Orbax cannot write s3:// checkpoints"),
    ("az://container/run", "Orbax cannot write az:// checkpoints"),
])
def test_a_workdir_on_storage_orbax_cannot_write_is_refused_in_one_line(corpus_path, path, words):
  run = subprocess.run(
      [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/ast.py:tiny", f"--workdir={path}",
       f"--config.data.path={corpus_path}", *OVERRIDES], cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
      capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode != 0
  lines = [line for line in run.stderr.splitlines() if line.strip()]
  assert words in lines[-1] and "Traceback" not in run.stderr, run.stderr


@pytest.mark.slow
def test_a_dataset_in_a_bucket_is_refused_with_the_mount_to_use(tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/ast.py:tiny", f"--workdir={tmp_path}",
       "--config.data.path=gs://bucket/synth_speech/1.0.0", *OVERRIDES], cwd=ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode != 0
  last = [line for line in run.stderr.splitlines() if line.strip()][-1]
  assert "ArrayRecord reads local files only" in last and "gcsfuse" in last, run.stderr
