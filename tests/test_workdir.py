"""`jaxspeech.workdir`: a workdir written before the workdir module (tests/data/workdir_2026_12_ast, an AST
trained 2 steps with EMA by the code of 2026-12-02) still reads, loads and resumes."""

import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from jaxspeech.ast import family as ast_family
from jaxspeech.workdir import NotAWorkdir, Workdir

OLD = os.path.join(os.path.dirname(__file__), "data", "workdir_2026_12_ast")
# Σ|param| over every param of that workdir, as the code that wrote it read them (convert.workdir.read)
OLD_SUMS = {"params": 178.62906487132827, "ema": 178.6248769553575}


@pytest.mark.parametrize("weights", ["params", "ema"])
def test_an_old_workdir_reads_as_it_was_written(weights):
  read = Workdir(OLD).read_params("ast", weights=weights)
  assert (read.step, read.weights, len(read.params)) == (2, weights, 27)
  total = sum(float(np.abs(v).astype(np.float64).sum()) for v in read.params.values())
  np.testing.assert_allclose(total, OLD_SUMS[weights], rtol=1e-12)


def test_an_old_workdir_loads_its_model_with_the_ema():
  model, cfg = Workdir(OLD).load_model(ast_family.FAMILY)
  ema = Workdir(OLD).read_params("ast", weights="ema").params
  np.testing.assert_array_equal(np.asarray(model.blocks[0].attn.query.kernel[...]),
                                ema["blocks.0.attn.query.kernel"])
  assert cfg.model.hidden == 16 and Workdir(OLD).steps() == [2]


def test_an_old_workdir_refuses_another_family_and_step():
  with pytest.raises(NotAWorkdir, match="holds a 'ast' run, not 'llasa'"):
    Workdir(OLD).read_params("llasa")
  with pytest.raises(NotAWorkdir, match=r"no checkpoint at step 7 \(it has \[2\]\)"):
    Workdir(OLD).read_params(step=7)


def test_claim_accepts_the_old_config_and_refuses_another_model(tmp_path):
  work = shutil.copytree(OLD, tmp_path / "wd")
  cfg = ml_collections.ConfigDict(json.loads((work / "config.json").read_text()))
  Workdir(str(work)).claim(cfg, write=False)
  cfg.model.hidden = 32
  with pytest.raises(NotAWorkdir, match="different model"):
    Workdir(str(work)).claim(cfg, write=False)


def test_claim_refuses_checkpoints_without_their_config(tmp_path):
  """A run that saves on SIGTERM after its workdir was deleted leaves checkpoints with no config.json: a new run
  must not resume them under its own model config."""
  work = shutil.copytree(OLD, tmp_path / "wd")
  cfg = ml_collections.ConfigDict(json.loads((work / "config.json").read_text()))
  (work / "config.json").unlink()
  with pytest.raises(NotAWorkdir, match=r"has checkpoints \[2\] but no config.json"):
    Workdir(str(work)).claim(cfg)
  assert not (work / "config.json").exists()


@pytest.mark.slow
def test_an_old_workdir_resumes_training(tmp_path, corpus_path):
  """The trainer of today takes the old run from step 2 to 3 (its iterator state included)."""
  work = shutil.copytree(OLD, tmp_path / "wd")
  cmd = [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/ast.py:tiny", f"--workdir={work}",
         f"--config.data.path={corpus_path}", "--config.train.steps=3", "--config.train.checkpoint_every=3",
         "--config.model.hidden=16", "--config.model.layers=1", "--config.model.heads=2", "--config.model.mlp=16",
         "--config.train.eval_every=0", "--config.train.batch_size=2", "--config.train.ema_decay=0.9"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})  # one device, as written
  assert result.returncode == 0, result.stderr[-2000:]
  assert Workdir(str(work)).steps() == [2, 3] and "no data-iterator state" not in result.stdout
