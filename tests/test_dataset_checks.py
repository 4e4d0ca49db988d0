"""A dataset without the features a family reads is refused in one line, before any batch is read."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxspeech.train import registry
from jaxspeech.codec import tokenize
from jaxspeech.data import tfds_io
from tests.helpers import ROOT, load_config

ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
NO_TEXT = tfds.features.FeaturesDict({
    "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES),
    "sample_rate": np.int32,
    "speaker_id": np.int32,
})


def _codes(i):
  return {"id": f"u{i}", "codes": np.arange(20, dtype=np.int32), "duration": np.float32(0.4), "text": "Codes.",
          "speaker": "s0", "speaker_id": np.int32(0), "language": "en-us"}


@pytest.fixture(scope="module")
def codes_path(tmp_path_factory):
  """A codes dataset, as `jaxspeech codec encode` writes it: no audio."""
  path = tmp_path_factory.mktemp("data") / "tiny_codes" / "1.0.0"
  return tfds_io.write_dataset(path, tokenize.FEATURES, {"train": [_codes(i) for i in range(4)]})


def _refusal(family, path):
  cfg = load_config(family, "tiny")
  cfg.data.path = path
  with pytest.raises(ValueError) as refused:
    registry.get(family).make_data(cfg, "train", train=True, shard_index=0, shard_count=1)
  return str(refused.value)


def test_llasa_refuses_a_speech_dataset(corpus_path):
  message = _refusal("llasa", corpus_path)
  assert "\n" not in message
  assert message.startswith(f"dataset {corpus_path} has features audio, id, language, sample_rate, speaker, "
                            "speaker_id, text, but the llasa family needs codes, text (codes missing)")
  assert "jaxspeech codec encode" in message


@pytest.mark.parametrize("family", ["ast", "codec", "vocoder", "dit"])
def test_speech_families_refuse_a_codes_dataset(codes_path, family):
  message = _refusal(family, codes_path)
  assert "\n" not in message
  assert message.startswith(f"dataset {codes_path} has features codes, duration, id, language, speaker, "
                            f"speaker_id, text, but the {family} family needs audio, sample_rate, speaker_id")
  assert "(audio, sample_rate missing)" in message and "jaxspeech data synth" in message


def test_dit_refuses_speech_without_transcripts(tmp_path):
  example = {"audio": np.zeros(800, np.int16), "sample_rate": np.int32(16_000), "speaker_id": np.int32(0)}
  path = tfds_io.write_dataset(tmp_path / "no_text" / "1.0.0", NO_TEXT, {"train": [example]})
  assert "needs audio, sample_rate, speaker_id, text (text missing)" in _refusal("dit", path)


def test_train_cli_refuses_a_codes_dataset_in_one_line(codes_path, tmp_path):
  cmd = [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/ast.py:tiny", f"--workdir={tmp_path}",
         f"--config.data.path={codes_path}"]
  result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      f"jaxspeech train: error: dataset {codes_path} has features codes, duration, id, language, speaker, "
      "speaker_id, text, but the ast family needs audio, sample_rate, speaker_id (audio, sample_rate missing); "
      "it trains on a speech dataset, as `jaxspeech data synth` or `data build` writes"]


def test_ast_refuses_fewer_classes_than_speakers(corpus_path):
  """Out-of-range speaker ids would make the loss NaN, blamed on the learning rate; refused before a step."""
  cfg = load_config("ast", "tiny")
  cfg.data.path = corpus_path
  cfg.model.num_classes = 4
  with pytest.raises(ValueError, match=r"has 16 speakers \(speaker_id 0..15\); the classifier has "
                                       r"model.num_classes=4: set it to at least 16"):
    registry.get("ast").make_data(cfg, "train", train=True, shard_index=0, shard_count=1)
