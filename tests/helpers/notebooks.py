"""Runs a notebook of notebooks/ top to bottom the way CI does (tests/test_notebooks.py, tests/test_notebooks_tts.py):
outputs under a temporary JAXSPEECH_NOTEBOOK_DIR, the test corpus as JAXSPEECH_CORPUS, a fresh python3 kernel in
notebooks/. The two test files split the notebooks between them (xdist gives each file to one worker)."""

import glob
import os

import nbclient
import nbformat

from tests.helpers import ROOT

ALL = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
GENERAL = ("ast.ipynb", "asr.ipynb", "scaling_laws.ipynb")  # run by tests/test_notebooks.py
TTS = ("llasa.ipynb", "dit.ipynb", "codec.ipynb")  # run by tests/test_notebooks_tts.py
CELL_TIMEOUT_S = 1800  # the toy sweep took 8.5 min on 2 cores shared with other jobs


def run(name: str, corpus_path: str, out_dir, monkeypatch) -> str:
  """Executes notebooks/`name`; returns everything its cells printed. A failing cell raises CellExecutionError with
  its traceback (the notebooks' own asserts fail the run)."""
  monkeypatch.setenv("JAXSPEECH_NOTEBOOK_DIR", str(out_dir))
  monkeypatch.setenv("JAXSPEECH_CORPUS", os.path.abspath(corpus_path))
  monkeypatch.delenv("JAXSPEECH_SWEEP_DIR", raising=False)
  notebook = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
  client.execute()
  return "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
