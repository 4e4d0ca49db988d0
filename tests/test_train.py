"""The trainer end to end: resume after SIGKILL, SIGTERM, torn checkpoints, the NaN guard, config errors."""

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

from jaxspeech.train import trainer
from tests.helpers import OVERRIDES, ROOT, tiny_ast

ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}


def _cli(workdir, corpus_path, *extra):
  return [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/ast.py:tiny", f"--workdir={workdir}",
          f"--config.data.path={corpus_path}", *OVERRIDES, *extra]


def _run(cmd, **kw):
  return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, **kw)


def _params(workdir, step):
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return jax.tree.leaves(state["params"])


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run_bitwise(corpus_path, tmp_path):
  steps = ["--config.train.steps=12", "--config.train.checkpoint_every=4"]
  straight = _run(_cli(tmp_path / "straight", corpus_path, *steps))
  assert straight.returncode == 0, straight.stderr[-3000:]

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cli(killed, corpus_path, *steps), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not (killed / "checkpoints" / "4" / "commit_success.txt").exists() and not (killed / "checkpoints" / "4" /
                                                                                   "_CHECKPOINT_METADATA").exists():
    assert time.time() < deadline and proc.poll() is None, "no checkpoint appeared"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_at_kill = sorted(int(s) for s in os.listdir(killed / "checkpoints") if s.isdigit())
  assert steps_at_kill and steps_at_kill[-1] < 12, steps_at_kill

  resumed = _run(_cli(killed, corpus_path, *steps))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for a, b in zip(_params(tmp_path / "straight", 12), _params(killed, 12), strict=True):
    np.testing.assert_array_equal(a, b)
  # Every step logged once: the lines the killed run wrote past its checkpoint were dropped on resume.
  logged = [m["step"] for m in _metrics(killed) if "loss" in m]
  assert logged == list(range(1, 13)), logged


def _finished_steps(directory):
  return sorted(int(s) for s in os.listdir(directory) if s.isdigit()) if directory.exists() else []


@pytest.mark.slow
def test_sigkill_during_a_best_checkpoint_save_resumes_and_keeps_one_readable_best(corpus_path, tmp_path):
  """Killed once the best-by-eval manager has written a step and before the first checkpoint (step 8): the rerun
  starts afresh, reaches that step again (Orbax refuses to save a step twice) and ends as an uninterrupted run,
  with the same best checkpoint."""
  steps = ["--config.train.steps=12", "--config.train.checkpoint_every=8", "--config.train.eval_every=2",
           "--config.train.best_metric=loss", "--config.train.best_mode=min"]
  straight = _run(_cli(tmp_path / "straight", corpus_path, *steps))
  assert straight.returncode == 0, straight.stderr[-3000:]

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cli(killed, corpus_path, *steps), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  best, deadline = killed / "best", time.time() + 240
  while not any((best / str(s) / "_CHECKPOINT_METADATA").exists() for s in _finished_steps(best)):
    assert time.time() < deadline and proc.poll() is None, "no best checkpoint was written"
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not _finished_steps(killed / "checkpoints")

  resumed = _run(_cli(killed, corpus_path, *steps))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for a, b in zip(_params(tmp_path / "straight", 12), _params(killed, 12), strict=True):
    np.testing.assert_array_equal(a, b)
  assert sorted(os.listdir(best)) == [str(s) for s in _finished_steps(tmp_path / "straight" / "best")]
  step = _finished_steps(best)[-1]
  mine = ocp.StandardCheckpointer().restore(os.path.join(best, str(step), "state"))
  theirs = ocp.StandardCheckpointer().restore(os.path.join(tmp_path / "straight" / "best", str(step), "state"))
  for a, b in zip(jax.tree.leaves(mine["params"]), jax.tree.leaves(theirs["params"]), strict=True):
    np.testing.assert_array_equal(a, b)


def test_sigterm_saves_a_checkpoint_and_exits_zero(corpus_path, tmp_path):
  proc = subprocess.Popen(_cli(tmp_path, corpus_path, "--config.train.steps=100000",
                               "--config.train.checkpoint_every=100000"),
                          cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not (tmp_path / "metrics.jsonl").exists() or not _metrics(tmp_path):
    assert time.time() < deadline and proc.poll() is None, "training never started"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert len(saved) == 1 and 0 < saved[0] < 100000
  assert f"SIGTERM: saved a checkpoint at step {saved[0]}" in err


def test_torn_latest_checkpoint_falls_back_to_previous(corpus_path, tmp_path, capsys):
  cfg = tiny_ast(corpus_path, steps=8, checkpoint_every=4)
  trainer.Trainer(cfg, str(tmp_path)).train()
  # Tear the newest checkpoint: its array data is gone, as after a crash mid-copy.
  for root, _, files in os.walk(tmp_path / "checkpoints" / "8" / "state"):
    for name in files:
      if not name.startswith("_"):
        os.remove(os.path.join(root, name))
  t = trainer.Trainer(cfg, str(tmp_path))
  from jaxspeech.workdir import checkpoints as checkpoint
  from jaxspeech.data import pipeline
  iterator = pipeline.make_iterator(t._data("train", train=True))  # pylint: disable=protected-access
  state = t.restore_or_init(iterator, checkpoint.Checkpoints(str(tmp_path), keep=3, async_save=False))
  assert int(state.step) == 4
  assert "checkpoint 8 is unreadable" in capsys.readouterr().out


def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(corpus_path, tmp_path):
  cfg = tiny_ast(corpus_path, steps=50, checkpoint_every=1)
  cfg.optim.update(lr=1e38, warmup_steps=0, clip_norm=0.0, schedule="constant")
  with pytest.raises(trainer.NonFiniteLoss, match=r"non-finite at step (\d+)") as info:
    trainer.Trainer(cfg, str(tmp_path)).train()
  bad = int(info.value.args[0].split("at step ")[1].split(" ")[0])
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert saved and saved[-1] <= bad
  assert f"the latest checkpoint is step {saved[-1]}." in info.value.args[0]
  for leaf in _params(tmp_path, saved[-1]):
    assert np.all(np.isfinite(leaf))


def test_end_to_end_loss_falls_and_eval_runs(corpus_path, tmp_path):
  result = _run(_cli(tmp_path, corpus_path, "--config.train.steps=40", "--config.train.eval_every=40",
                     "--config.train.checkpoint_every=40", "--config.optim.lr=3e-3",
                     "--config.train.profile_steps=3,4", f"--config.train.compilation_cache={tmp_path / 'xla'}"))
  assert result.returncode == 0, result.stderr[-3000:]
  losses = [m["loss"] for m in _metrics(tmp_path) if "loss" in m]
  # ln 16 = 2.77 is chance; 40 steps of this 1-layer model take the mean loss down by ~0.2-0.5.
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.15, losses
  line = [m for m in _metrics(tmp_path) if "eval/accuracy" in m]
  assert line and 0 <= line[-1]["eval/accuracy"] <= 1
  assert {"step_time", "examples_per_s", "frames_per_s", "flops_per_s", "lr", "grad_norm"} <= set(
      [m for m in _metrics(tmp_path) if "loss" in m][-1])
  assert os.listdir(tmp_path / "tb")
  assert "eval/accuracy" in result.stdout
  # goodput: the first step's compile, the eval and the saves are accounted for, and the rest is productive
  final = _metrics(tmp_path)[-1]
  assert final["time/compile_s"] > 0 and final["time/eval_s"] > 0 and final["time/checkpoint_s"] > 0, final
  assert 0 < final["goodput"] < 1 and final["time/wall_s"] > sum(v for k, v in final.items() if k.startswith("time/")
                                                                  and k != "time/wall_s")
  traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files if f.endswith(".xplane.pb")]
  assert traces, "no profiler trace written"
  assert os.listdir(tmp_path / "xla"), "the persistent compilation cache stayed empty"


def test_profile_steps_are_checked(corpus_path, tmp_path):
  result = _run(_cli(tmp_path, corpus_path, "--config.train.steps=2", "--config.train.profile_steps=5"))
  assert result.returncode == 2
  assert "train.profile_steps must be 'first,last'" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--config.train.nonexistent_key=3"], "nonexistent_key"),
    (["--config.model.hidden=abc"], "hidden"),
    (["--config.data.path=/no/such/dataset"], "/no/such/dataset"),
])
def test_config_errors_are_clear(corpus_path, tmp_path, args, message):
  result = _run(_cli(tmp_path, corpus_path, *args))
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr


def test_unknown_variant_is_clear(tmp_path):
  result = _run([sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/ast.py:huge",
                 f"--workdir={tmp_path}"])
  assert result.returncode != 0 and "huge" in result.stderr and "Traceback" not in result.stderr


def test_workdir_of_another_shape_is_refused(corpus_path, tmp_path):
  cfg = tiny_ast(corpus_path, steps=1, checkpoint_every=1)
  trainer.Trainer(cfg, str(tmp_path)).train()
  result = _run(_cli(tmp_path, corpus_path, "--config.model.hidden=48", "--config.train.steps=2"))
  assert result.returncode == 2
  assert "different model" in result.stderr and "Traceback" not in result.stderr


def test_restore_onto_another_mesh(corpus_path, tmp_path):
  from jaxspeech.data import pipeline
  from jaxspeech.workdir import checkpoints as checkpoint
  cfg = tiny_ast(corpus_path, steps=2, checkpoint_every=2)
  cfg.model.update(hidden=64, mlp=128)
  cfg.mesh.update(data=8)
  trainer.Trainer(cfg, str(tmp_path)).train()
  saved = _params(tmp_path, 2)
  cfg.mesh.update(data=2, fsdp=1, tensor=4)
  t = trainer.Trainer(cfg, str(tmp_path))
  iterator = pipeline.make_iterator(t._data("train", train=True))  # pylint: disable=protected-access
  state = t.restore_or_init(iterator, checkpoint.Checkpoints(str(tmp_path), keep=3, async_save=False))
  assert int(state.step) == 2
  kernel = state.params["blocks"][0]["fc1"]["kernel"][...]
  assert kernel.sharding.mesh.shape["tensor"] == 4 and kernel.sharding.spec == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), saved, strict=True):
    np.testing.assert_array_equal(a, b)
