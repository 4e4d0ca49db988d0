"""The TTS families' notebooks (Llasa, DiT, codec) run top to bottom, each building what it needs at toy size and
comparing its export with the PyTorch library that loads it; their own asserts fail the run, and the line each
prints with the measured difference is checked here. tests/test_notebooks.py runs the other notebooks (a file per
xdist worker) and checks that every notebook is run by one of the two files."""

import os
import re

import pytest

from tests.helpers import notebooks

EXPECTED = {  # what each notebook prints once its export agrees with ours
    "llasa.ipynb": ("transformers: max |logit difference|", "greedy codes equal ours: True"),
    "dit.ipynb": ("F5 load_model: max |flow difference|", "Euler steps: max |mel difference|"),
    "codec.ipynb": ("Xcodec2Model: identical codes", "max |audio difference|"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", notebooks.TTS)
def test_notebook_runs(name, corpus_path, tmp_path, monkeypatch):
  # On the machine's own devices (one CPU here), as a user's Jupyter runs them: tests/conftest.py's 8 fake CPU
  # devices would have to split their toy batches of 4 eight ways.
  monkeypatch.setenv("XLA_FLAGS", re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                         os.environ.get("XLA_FLAGS", "")).strip())
  printed = notebooks.run(name, corpus_path, tmp_path, monkeypatch)
  for line in EXPECTED[name]:
    assert line in printed, printed[-2000:]
