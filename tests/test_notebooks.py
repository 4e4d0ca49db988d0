"""Every notebook runs top to bottom on a fresh checkout: each builds what it needs at toy size, and its own
asserts (the AST export's logits against ours, ...) fail the run. Saved notebooks carry no outputs
(tests/test_docs_paths.py). This file runs the AST, ASR and scaling-law notebooks; tests/test_notebooks_tts.py the
TTS families' (a file per xdist worker)."""

import json

import pytest

from tests.helpers import notebooks


def test_there_is_a_notebook_per_cheap_family():
  families = {"ast.ipynb", "asr.ipynb", "llasa.ipynb", "dit.ipynb", "codec.ipynb", "scaling_laws.ipynb"}
  assert families <= set(notebooks.ALL)


def test_every_notebook_is_run_by_one_test_file():
  assert sorted(notebooks.GENERAL + notebooks.TTS) == notebooks.ALL


@pytest.mark.slow
@pytest.mark.parametrize("name", notebooks.GENERAL)
def test_notebook_runs(name, corpus_path, tmp_path, monkeypatch):
  printed = notebooks.run(name, corpus_path, tmp_path, monkeypatch)
  if name == "ast.ipynb":
    assert "same predicted speaker: 100%" in printed, printed[-2000:]
  if name == "asr.ipynb":
    assert "largest |streamed - offline| logit" in printed and "per 320 ms chunk" in printed, printed[-2000:]
  if name == "scaling_laws.ipynb":
    fit = json.loads((tmp_path / "scaling_laws" / "sweep" / "fit.json").read_text())
    assert (len(fit["points"]), fit["runs"]) == (6, 6) and "law" in fit, fit.get("law_error")
