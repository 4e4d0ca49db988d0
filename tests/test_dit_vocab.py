"""Where a dit run keeps its character vocabulary: in its workdir, never in the dataset directory."""

import json
import os

import pytest

from jaxspeech.dit import vocab
from jaxspeech.train import config as base


def config(vocab_file: str = ""):
  cfg = base.defaults()
  cfg.model.vocab_file = vocab_file
  cfg.data.path = "/nonexistent-dataset"  # with a vocab_file, the dataset is never opened
  return cfg


def test_prepare_copies_the_vocabulary_into_the_workdir(tmp_path):
  f5_vocab = tmp_path / "vocab.txt"
  vocab.write(str(f5_vocab), [" ", "a", "b", "é"])
  workdir = str(tmp_path / "run")
  given = config(str(f5_vocab))
  cfg = vocab.prepare(given, workdir)
  assert cfg.data.vocab_file == vocab.in_workdir(workdir)
  assert vocab.read(vocab.in_workdir(workdir)) == [" ", "a", "b", "é"]
  assert vocab.of_config(cfg) == [" ", "a", "b", "é"]
  assert "vocab_file" not in given.data  # the given config is left as it was
  # resumed: the workdir's copy is read; the same vocab_file is accepted, another refused
  assert vocab.prepare(config(str(f5_vocab)), workdir).data.vocab_file == vocab.in_workdir(workdir)
  other = tmp_path / "other.txt"
  vocab.write(str(other), [" ", "x"])
  with pytest.raises(ValueError, match="differs from the vocabulary"):
    vocab.prepare(config(str(other)), workdir)


def test_no_workdir_writes_nothing(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  cfg = config()
  assert vocab.prepare(cfg, "") is cfg
  assert not os.listdir(tmp_path)


def test_synthesis_reads_the_workdir_vocabulary(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  vocab.write(vocab.in_workdir(workdir), [" ", "h", "i"])
  imported = tmp_path / "vocab.txt"
  vocab.write(str(imported), [" ", "z"])
  assert vocab.of_workdir(workdir, {"model": {"vocab_file": str(imported)}}) == [" ", "h", "i"]
  os.remove(vocab.in_workdir(workdir))  # an imported F5 checkpoint: its vocab.txt
  assert vocab.of_workdir(workdir, {"model": {"vocab_file": str(imported)}}) == [" ", "z"]
  with pytest.raises(ValueError, match="--vocab"):
    vocab.of_workdir(workdir, json.loads('{"model": {"vocab_file": ""}}'))
