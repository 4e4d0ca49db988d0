"""`tensorboard --logdir workdirs` (README) reads what training writes: TensorBoard's own reader finds the
scalars, and a run resumed from an earlier checkpoint shows each step once, with the resumed run's values."""

import json
import os
import shutil

import pytest
from tensorboard.backend.event_processing import event_accumulator

from jaxspeech.train import trainer
from tests.helpers import tiny_ast


def _scalars(workdir, tag: str) -> dict[int, float]:
  """{step: value} as TensorBoard shows them; a step written twice is an error."""
  reader = event_accumulator.EventAccumulator(os.path.join(workdir, "tb"))
  reader.Reload()
  events = reader.Scalars(tag)
  steps = [e.step for e in events]
  assert len(steps) == len(set(steps)), f"{tag}: steps shown twice: {steps}"
  return {e.step: e.value for e in events}


@pytest.mark.slow
def test_tensorboard_reads_the_scalars_and_a_resume_shows_each_step_once(corpus_path, tmp_path):
  cfg = tiny_ast(corpus_path, steps=6, checkpoint_every=4)
  trainer.Trainer(cfg, str(tmp_path)).train()
  first = _scalars(tmp_path, "loss")
  assert sorted(first) == [1, 2, 3, 4, 5, 6]
  tags = event_accumulator.EventAccumulator(os.path.join(tmp_path, "tb")).Reload().Tags()["scalars"]
  assert {"loss", "lr", "grad_norm", "accuracy"} <= set(tags), tags

  # Killed after step 6 before its checkpoint: the next run resumes at 4 and trains 5..8 again.
  shutil.rmtree(tmp_path / "checkpoints" / "6")
  cfg.train.steps = 8
  trainer.Trainer(cfg, str(tmp_path)).train()
  second = _scalars(tmp_path, "loss")
  logged = {m["step"]: m["loss"] for m in map(json.loads, open(tmp_path / "metrics.jsonl")) if "loss" in m}
  assert sorted(second) == list(range(1, 9)) == sorted(logged)
  for step in range(1, 9):  # TensorBoard stores float32
    assert abs(second[step] - logged[step]) <= 1e-6 * max(1.0, abs(logged[step])), step
  assert [second[s] for s in (1, 2, 3, 4)] == [first[s] for s in (1, 2, 3, 4)]
  raw = event_accumulator.EventAccumulator(os.path.join(tmp_path, "tb"), purge_orphaned_data=False).Reload()
  assert sorted(e.step for e in raw.Scalars("loss")) == [1, 2, 3, 4, 5, 5, 6, 6, 7, 8]  # both runs' 5 and 6 on disk
