"""Faults against the trainer (issue #16): signals during eval, damaged checkpoints, two trainers on a workdir.

The invariant: after any of these the next run ends with the same params as an uninterrupted run, or refuses
with one line, and never reports a save it did not make. Each run is AST at test size on the test corpus.
"""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxspeech import cli
from jaxspeech.train import trainer
from jaxspeech.workdir import checkpoints as checkpoint, lock as workdir_lib
from tests.helpers import OVERRIDES, ROOT, fill_disk, tiny_ast
from tests.helpers.llasa import tiny_config as tiny_llasa

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the 8 host devices of conftest.py, as the in-process runs have


def _params(workdir, step):
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return jax.tree.leaves(state["params"])


def _steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def _train_cli(workdir, corpus_path, *extra):
  """`jaxspeech train` of the test AST (tests/helpers) in its own process."""
  cmd = [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/ast.py:tiny", f"--workdir={workdir}",
         f"--config.data.path={corpus_path}", *OVERRIDES, *extra]
  return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=False)


def test_sigterm_during_eval_saves_that_step(corpus_path, tmp_path, capsys):
  """The signal lands while the step-5 eval runs, with no checkpoint due: the step is saved all the same."""
  run = trainer.Trainer(tiny_ast(corpus_path, steps=1000, checkpoint_every=1000, eval_every=5), str(tmp_path))
  eval_step = run.eval_step

  def signalled(*args):
    os.kill(os.getpid(), signal.SIGTERM)
    return eval_step(*args)

  run.eval_step = signalled
  run.train()
  assert _steps(tmp_path) == [5]
  assert "SIGTERM: saved a checkpoint at step 5" in capsys.readouterr().err


def _config(family, corpus_path, code_data, **train):
  if family == "ast":
    return tiny_ast(corpus_path, steps=8, checkpoint_every=4, **train)
  cfg = tiny_llasa(code_data)
  cfg.train.update(**{**dict(steps=8, checkpoint_every=4, log_every=1, eval_every=0, best_metric="", batch_size=8),
                      **train})
  return cfg


@pytest.fixture(scope="module")
def uninterrupted(corpus_path, code_data, tmp_path_factory):
  """family -> the params after an uninterrupted 8-step run (checkpoints at 4 and 8), each run once."""
  @functools.cache
  def params(family):
    workdir = str(tmp_path_factory.mktemp(f"uninterrupted_{family}"))
    trainer.Trainer(_config(family, corpus_path, code_data), workdir).train()
    return _params(workdir, 8)
  return params


def _signal_on_call(fn, n: int, sig: signal.Signals, after: bool = False):
  """`fn`, sending this process `sig` as its n-th call starts (or once it returns, with `after`)."""
  calls = [0]

  def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == n and not after:
      os.kill(os.getpid(), sig)
    out = fn(*args, **kwargs)
    if calls[0] == n and after:
      os.kill(os.getpid(), sig)
    return out
  return wrapped


# moment: (the runs before the last, each as (what is signalled: a Trainer attribute or a Checkpoints method,
# on which call, the signal, once the call returns?), and the train overrides of those runs)
TERM, INT = signal.SIGTERM, signal.SIGINT
MOMENTS = {
    "restore": ([("train_step", 3, TERM, False), ("restore_or_init", 1, TERM, False)], {}),
    "first step, compiling": ([("train_step", 1, TERM, False)], {}),
    "a middle step (SIGINT)": ([("train_step", 3, INT, False)], {}),
    "the last step": ([("train_step", 8, TERM, False)], {}),
    "a batch going to the devices": ([("_global", 2, TERM, False)], {}),
    "the metrics of a step": ([("_report", 3, INT, False)], {}),
    "a checkpoint save": ([("Checkpoints.save", 1, TERM, False)], {}),
    "an async save in flight": ([("Checkpoints.save", 1, TERM, True)], {}),
    "an eval": ([("eval_step", 1, TERM, False)], {"eval_every": 2}),
    "the best-checkpoint save": ([("Checkpoints.save_best", 1, TERM, False)],
                                 {"eval_every": 2, "best_metric": "loss", "best_mode": "min"}),
    "the end-of-run wait": ([("Checkpoints.wait", 1, TERM, False)], {}),
    "two signals, 2 steps apart": ([("train_step", 2, TERM, False), ("train_step", 2, INT, False)], {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("family,moment", [(f, m) for f in ("ast", "llasa") for m in MOMENTS])
def test_a_signal_at_any_moment_resumes_to_the_uninterrupted_params(
    corpus_path, code_data, uninterrupted, tmp_path, capsys, monkeypatch, family, moment):
  """Each signalled run stops at a step and says whether that step is on disk, truthfully; the next run ends
  with the uninterrupted run's params, bit for bit, and every step's metrics once."""
  runs, overrides = MOMENTS[moment]
  for what, n, sig, after in runs:
    run = trainer.Trainer(_config(family, corpus_path, code_data, **overrides), str(tmp_path))
    if what.startswith("Checkpoints."):
      name = what.split(".")[1]
      monkeypatch.setattr(checkpoint.Checkpoints, name, _signal_on_call(getattr(checkpoint.Checkpoints, name), n,
                                                                        sig, after))
    else:
      setattr(run, what, _signal_on_call(getattr(run, what), n, sig, after))
    run.train()
    monkeypatch.undo()
    said = capsys.readouterr().err.splitlines()
    stops = [line for line in said if line.startswith(f"{sig.name}: ")]
    assert len(stops) <= 1, said[-20:]
    if not stops:  # the signal came once the run had ended: all of it is saved
      assert _steps(tmp_path)[-1] == 8
    elif "saved a checkpoint at step" in stops[0] or "the checkpoint at step" in stops[0]:
      assert int(stops[0].split("step ")[1].split(";")[0].split(" ")[0]) in _steps(tmp_path), stops[0]
    else:
      assert "with no checkpoint of it" in stops[0], stops[0]
  trainer.Trainer(_config(family, corpus_path, code_data), str(tmp_path)).train()
  for a, b in zip(uninterrupted(family), _params(tmp_path, 8), strict=True):
    np.testing.assert_array_equal(a, b)
  steps = [line["step"] for line in map(json.loads, open(tmp_path / "metrics.jsonl")) if "loss" in line]
  assert sorted(steps) == list(range(1, 9)), steps


def _damage(kind: str, step_dir: str) -> None:
  """Damages the state of one checkpoint; the array kinds hit every data file (which holds which leaf depends on
  the OCDBT layout)."""
  state = os.path.join(step_dir, "state")
  arrays = [os.path.join(root, f) for root, _, files in os.walk(state) for f in files
            if os.path.basename(root) == "d"]
  for path in arrays if kind in ("truncated", "garbage", "bit_flip") else []:
    size = os.path.getsize(path)
    if kind == "truncated":
      os.truncate(path, size // 2)
    elif kind == "garbage":
      with open(path, "r+b") as f:
        f.write(os.urandom(size))
    else:
      with open(path, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0x10]))
  if kind in ("truncated", "garbage", "bit_flip"):
    assert arrays
  elif kind == "no_metadata":
    os.remove(os.path.join(state, "_METADATA"))
  elif kind == "no_state":
    shutil.rmtree(state)
  else:
    raise ValueError(kind)


DAMAGE = ["truncated", "garbage", "bit_flip", "no_metadata", "no_state"]


def _train_in_new_process(family, corpus_path, code_data, workdir):
  """The 8-step run of `_config` in its own process, as a rerun after a crash is."""
  code = ("from jaxspeech.train import trainer; from tests.test_faults import _config; "
          f"trainer.Trainer(_config({family!r}, {corpus_path!r}, {tuple(map(str, code_data))!r}), "
          f"{str(workdir)!r}).train()")
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=300, check=False)


@pytest.mark.parametrize("family,kind", [("ast", k) for k in DAMAGE]
                         + [pytest.param("llasa", k, marks=pytest.mark.slow) for k in DAMAGE])
def test_damaged_latest_checkpoint_is_set_aside_and_the_run_ends_as_an_uninterrupted_one(
    corpus_path, code_data, uninterrupted, tmp_path, family, kind):
  """The damaged run resumes in a new process, as after a crash (this one's TensorStore cache holds the bytes)."""
  trainer.Trainer(_config(family, corpus_path, code_data), str(tmp_path)).train()
  _damage(kind, os.path.join(tmp_path, "checkpoints", "8"))
  out = _train_in_new_process(family, corpus_path, code_data, tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "checkpoint 8 is unreadable" in out.stdout and "moved damaged checkpoint 8" in out.stdout, out.stderr[-3000:]
  assert os.path.isdir(os.path.join(tmp_path, "checkpoints", ".damaged", "8")) and _steps(tmp_path) == [4, 8]
  for a, b in zip(uninterrupted(family), _params(tmp_path, 8), strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_flipped_bit_is_caught_by_the_digest():
  """A state whose bytes differ from the digest saved with it does not restore."""
  saved = checkpoint.digest({"w": np.arange(6, dtype=np.float32)})
  flipped = np.arange(6, dtype=np.float32)
  flipped.view(np.uint32)[3] ^= 1 << 7
  with pytest.raises(checkpoint.DamagedCheckpoint, match=r"\['w'\]"):
    checkpoint._check_digest(saved, {"w": flipped})  # pylint: disable=protected-access
  checkpoint._check_digest(saved, {"w": np.arange(6, dtype=np.float32)})  # pylint: disable=protected-access


def test_a_second_trainer_on_a_held_workdir_refuses_in_one_line(corpus_path, tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    out = _train_cli(tmp_path, corpus_path, "--config.train.steps=2")
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [line for line in out.stderr.splitlines() if "error" in line]
  assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0] and "in use" in lines[0], out.stderr[-2000:]


def test_a_stale_lock_is_taken_over(corpus_path, tmp_path):
  """The lock file of a dead trainer (its flock gone with it) does not block the next run."""
  (tmp_path / "lock").write_text('{"host": "gone", "pid": 999999, "since": "2026-01-01T00:00:00+00:00"}')
  trainer.Trainer(tiny_ast(corpus_path, steps=2, checkpoint_every=2), str(tmp_path)).train()
  assert _steps(tmp_path) == [2] and f'"pid": {os.getpid()}' in (tmp_path / "lock").read_text()


@pytest.mark.parametrize("field,value", [("checkpoint_every", 0), ("steps", -5), ("log_every", 0)])
def test_step_counts_the_loop_cannot_honour_are_refused_before_any_work(corpus_path, tmp_path, field, value):
  with pytest.raises(trainer.TrainingError, match=f"train.{field}={value} must be at least"):
    trainer.Trainer(tiny_ast(corpus_path, **{field: value}), str(tmp_path)).train()
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("model", ["--lm", "--dit"])
def test_empty_text_is_refused(tmp_path, capsys, model):
  assert cli.main(["synthesize", "--text", " \t", "--out", str(tmp_path / "x.wav"), model, str(tmp_path)]) == 2
  assert "has nothing to speak" in capsys.readouterr().err and not (tmp_path / "x.wav").exists()


@pytest.fixture
def small_disk(tmp_path):
  """A 16 MiB tmpfs mounted for the test (needs root; skipped otherwise)."""
  mount = tmp_path / "disk"
  mount.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                           capture_output=True, text=True, check=False)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  yield mount
  subprocess.run(["umount", str(mount)], check=False, capture_output=True)


@pytest.mark.slow
def test_a_full_disk_refuses_in_one_line_and_the_run_resumes_once_there_is_room(corpus_path, uninterrupted,
                                                                                small_disk):
  """A run stopped at step 5 (checkpoints 4 and 5), then a disk filled to 64 KiB short: the step-8 save is refused
  before a byte of it is written, naming step 5; with the space back, the run ends as an uninterrupted one."""
  workdir = small_disk / "run"
  run = trainer.Trainer(tiny_ast(corpus_path, steps=8, checkpoint_every=4), str(workdir))
  run.train_step = _signal_on_call(run.train_step, 5, signal.SIGTERM)
  run.train()
  assert _steps(workdir) == [4, 5]
  fill_disk(small_disk)
  out = _train_cli(workdir, corpus_path, "--config.train.steps=8", "--config.train.checkpoint_every=4")
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("jaxspeech train: error:")]
  assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert errors[0].startswith("jaxspeech train: error: no space for checkpoint 8") and "latest checkpoint is step 5" \
      in errors[0], errors[0]
  assert _steps(workdir) == [4, 5]
  (small_disk / "filler").unlink()
  out = _train_cli(workdir, corpus_path, "--config.train.steps=8", "--config.train.checkpoint_every=4")
  assert out.returncode == 0, out.stderr[-3000:]
  for a, b in zip(uninterrupted("ast"), _params(workdir, 8), strict=True):
    np.testing.assert_array_equal(a, b)


# `jaxspeech train` whose disk fills (to 64 KiB short) once the step-8 space check has passed: the disk filling
# while the run writes, which no check before a write can see.
_FILL_AFTER_THE_CHECK = """
import sys
from jaxspeech import cli
from jaxspeech.workdir import checkpoints
from tests.helpers import fill_disk
check, disk = checkpoints.Checkpoints._check_space, sys.argv[1]
def check_then_fill(self, step, state):
  check(self, step, state)
  if step == 8:
    self.manager.wait_until_finished()  # checkpoint 4 on disk: the disk fills under checkpoint 8's write alone
    fill_disk(disk)
checkpoints.Checkpoints._check_space = check_then_fill
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_disk_that_fills_during_a_write_stops_in_one_line_and_the_run_resumes(corpus_path, uninterrupted,
                                                                               small_disk):
  """The disk fills while checkpoint 8 (or a metrics line, or an event file) is written: one line naming the
  latest checkpoint on disk (4), no traceback; with the space back, the run ends as an uninterrupted one."""
  workdir = small_disk / "run"
  train = ["train", "--config=configs/ast.py:tiny", f"--workdir={workdir}", f"--config.data.path={corpus_path}",
           *OVERRIDES, "--config.train.steps=8", "--config.train.checkpoint_every=4"]
  full = subprocess.run([sys.executable, "-c", _FILL_AFTER_THE_CHECK, str(small_disk), *train], cwd=ROOT,
                        env={**ENV, "JAXSPEECH_MALLOC_TUNING": "0"},  # no re-exec: the fault lives in this process
                        capture_output=True, text=True, timeout=300, check=False)
  assert full.returncode == 2, full.stderr[-3000:]
  saved = _steps(workdir)
  assert saved == [4], saved
  errors = [line for line in full.stderr.splitlines() if line.startswith("jaxspeech train: error:")]
  assert len(errors) == 1 and "filled up during the run" in errors[0] and "the latest checkpoint is step 4" in \
      errors[0], full.stderr[-3000:]
  (small_disk / "filler").unlink()
  out = _train_cli(workdir, corpus_path, "--config.train.steps=8", "--config.train.checkpoint_every=4")
  assert out.returncode == 0, out.stderr[-3000:]
  assert _steps(workdir) == [4, 8]
  for a, b in zip(uninterrupted("ast"), _params(workdir, 8), strict=True):
    np.testing.assert_array_equal(a, b)
  assert "Traceback" not in full.stderr and "ERROR" not in full.stderr, full.stderr[-3000:]
