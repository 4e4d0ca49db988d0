"""Every notebook runs top to bottom on a fresh checkout: each builds what it needs at toy size, and its own
asserts (the AST export's logits against ours, ...) fail the run. Saved notebooks carry no outputs
(tests/test_docs_paths.py)."""

import glob
import json
import os

import nbclient
import nbformat
import pytest

from tests.helpers import ROOT

NOTEBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
CELL_TIMEOUT_S = 1800  # the toy sweep took 8.5 min on 2 cores shared with other jobs


def test_there_is_a_notebook_per_cheap_family():
  assert {"ast.ipynb", "asr.ipynb", "scaling_laws.ipynb"} <= set(NOTEBOOKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, corpus_path, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXSPEECH_NOTEBOOK_DIR", str(tmp_path))
  monkeypatch.setenv("JAXSPEECH_CORPUS", os.path.abspath(corpus_path))
  monkeypatch.delenv("JAXSPEECH_SWEEP_DIR", raising=False)
  notebook = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
  client.execute()  # raises CellExecutionError with the failing cell and its traceback
  printed = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
  if name == "ast.ipynb":
    assert "same predicted speaker: 100%" in printed, printed[-2000:]
  if name == "asr.ipynb":
    assert "largest |streamed - offline| logit" in printed and "per 320 ms chunk" in printed, printed[-2000:]
  if name == "scaling_laws.ipynb":
    fit = json.loads((tmp_path / "scaling_laws" / "sweep" / "fit.json").read_text())
    assert (len(fit["points"]), fit["runs"]) == (6, 6) and "law" in fit, fit.get("law_error")
