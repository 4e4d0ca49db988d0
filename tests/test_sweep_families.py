"""The Llasa and DiT sweeps: D counts what their batches hold (the real tokens of Llasa's packed rows, the mel
frames of DiT's utterances), configs/sweeps/llasa_cpu.py and dit_cpu.py plan consistent runs, and the two
cheapest Llasa runs train end to end."""

import os
import sqlite3
import textwrap

import numpy as np
import pytest

from jaxspeech.data import per_step, pipeline
from jaxspeech.sweep import cli as sweep_cli, counts, design
from jaxspeech.train import config, registry
from tests.helpers import ROOT


def _data(name, code_data, corpus_path) -> dict:
  if name == "llasa_cpu":
    return {"data.path": code_data[0], "llasa.tokenizer": code_data[1]}
  return {"data.path": corpus_path}


def _config(tmp_path, name, overrides, grid="") -> str:
  """configs/sweeps/<name>.py on the test's data, with `grid` (source of a design.Grid) as its design if given."""
  path = tmp_path / f"{name}_test.py"
  path.write_text(textwrap.dedent(f"""\
      import dataclasses
      from jaxspeech.sweep import design

      def get_sweep():
        sweep = design.load({os.path.join(ROOT, "configs", "sweeps", name + ".py")!r})
        return dataclasses.replace(sweep, overrides={{**sweep.overrides, **{overrides!r}}}, design={grid or "sweep.design"})
      """))
  return str(path)


def _first_batches(family, cfg):
  iterator = pipeline.make_iterator(family.make_data(cfg, cfg.data.train_split, train=True, shard_index=0,
                                                     shard_count=1))
  batches = [next(iterator) for _ in range(per_step.BATCHES)]
  return iterator, batches


def test_llasa_counts_the_real_tokens_of_its_packed_rows(code_data):
  cfg = config.load(os.path.join(ROOT, "configs", "llasa.py:tiny"),
                    [f"--config.data.path={code_data[0]}", f"--config.llasa.tokenizer={code_data[1]}"])
  family = registry.get("llasa")
  iterator, _ = _first_batches(family, cfg)
  stats = pipeline.pipeline_stats(iterator)   # the packer's own count of filled slots
  assert stats["slots"] == per_step.BATCHES * 4 * 512
  assert family.tokens_per_step(cfg) == pytest.approx(stats["filled"] / per_step.BATCHES)
  assert family.tokens_per_step(cfg) < 0.98 * 4 * 512


def test_dit_counts_the_mel_frames_of_its_utterances(corpus_path):
  cfg = config.load(os.path.join(ROOT, "configs", "dit.py:tiny"), [f"--config.data.path={corpus_path}"])
  family = registry.get("dit")
  _, batches = _first_batches(family, cfg)
  frames = [np.asarray(b["audio_lengths"])[np.asarray(b["valid"])].sum() / 256 for b in batches]  # hop 256
  assert family.tokens_per_step(cfg) == pytest.approx(np.mean(frames))
  assert family.tokens_per_step(cfg) < 0.9 * cfg.data.frame_budget   # the budget's padding is not counted


@pytest.mark.parametrize("name", ["llasa_cpu", "dit_cpu"])
def test_sweep_config_plans_runs_whose_n_d_and_c_agree(name, tmp_path, capsys, monkeypatch, code_data, corpus_path):
  monkeypatch.chdir(ROOT)
  path = _config(tmp_path, name, _data(name, code_data, corpus_path))
  assert sweep_cli.main(["run", f"--config={path}", f"--workdir={tmp_path / 'sweep'}", "--dry-run"]) == 0
  sweep = design.load(path)
  runs, notes = design.plan(sweep)
  assert f"sweep {name}: {len(runs)} runs, {len(runs)} to run" in capsys.readouterr().out
  sizes = sweep.design.sizes
  assert len(sweep.design.budgets) >= 3 and all(3 <= len(sizes[b]) <= 4 for b in sweep.design.budgets)
  points = {(b, s.width, s.depth) for b in sweep.design.budgets for s in sizes[b]}
  planned = {(r.coords["budget"], r.coords["width"], r.coords["depth"]) for r in runs}
  assert planned <= points and len(points - planned) == sum(n.startswith("left out") for n in notes)
  assert len({r.coords["budget"] for r in runs}) >= 3
  assert not any(n.startswith("N counts") for n in notes)     # nothing frozen in these models
  for run in runs:
    cfg = counts.resolve(sweep.train_config, run.overrides)
    assert run.params == counts.param_count(cfg)
    assert run.tokens == run.steps * counts.tokens_per_step(cfg)
    assert run.compute == pytest.approx(6 * run.params * run.tokens)
    assert abs(run.compute / run.coords["budget"] - 1) <= 0.5 / run.steps + 1e-9   # steps are rounded
    assert run.flops > run.compute    # the padding slots cost FLOPs but add nothing to D


@pytest.mark.slow
def test_the_two_cheapest_llasa_runs_train_end_to_end(tmp_path, monkeypatch, code_data, corpus_path):
  monkeypatch.chdir(ROOT)
  monkeypatch.delenv("XLA_FLAGS")   # the trainers see one CPU device, as on a 2-core machine: 4 rows split over 8 do not
  data = _data("llasa_cpu", code_data, corpus_path)
  runs, _ = design.plan(design.load(_config(tmp_path, "llasa_cpu", data)))
  cheapest = sorted(runs, key=lambda r: r.flops)[:2]
  sizes = ", ".join(f"design.Size({r.coords['width']}, {r.coords['depth']})" for r in cheapest)
  path = _config(tmp_path, "llasa_cpu", data, f'design.Grid(axes={{"train.steps": [5]}}, sizes=[{sizes}])')
  sweep_dir = tmp_path / "sweep"
  assert sweep_cli.main(["run", f"--config={path}", f"--workdir={sweep_dir}"]) == 0
  db = sqlite3.connect(sweep_dir / "sweep.db")
  rows = db.execute("SELECT status, final_eval_loss, tokens, steps FROM runs").fetchall()
  db.close()
  per_batch = counts.tokens_per_step(counts.resolve("configs/llasa.py:tiny", runs[0].overrides))
  assert len(rows) == 2
  for status, loss, tokens, steps in rows:
    assert status == "done" and 0 < loss < 12 and steps == 5 and tokens == 5 * per_batch
