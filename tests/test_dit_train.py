"""The dit family the way a user runs it: `jaxspeech train --config=configs/dit.py:tiny` (loss falls), then
`jaxspeech dit synthesize --dit WORKDIR` from a corpus clip (Griffin-Lim, no vocoder)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
import soundfile
from flax import nnx

from jaxspeech import cli
from jaxspeech.data import tfds_io
from jaxspeech.dit import convert, vocab
from jaxspeech.dit.model import build, config_from
from jaxspeech.dit.sizes import SIZES
from jaxspeech.workdir import Workdir
from tests.helpers import ROOT

ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
# tiny, shortened for a 2-core CI machine: two blocks, 4-second clips in batches of ~4, a short warmup
FAST = ["--config.model.depth=2", "--config.data.bucket_seconds=(4,)", "--config.data.frame_budget=1536",
        "--config.optim.warmup_steps=5", "--config.optim.lr=2e-3", "--config.train.log_every=1",
        "--config.train.eval_every=0", "--config.train.checkpoint_every=30"]


def listing(path: str) -> dict[str, float]:
  return {name: os.path.getmtime(os.path.join(path, name)) for name in os.listdir(path)}


@pytest.fixture(scope="module")
def training(corpus_path, tmp_path_factory):
  """(workdir, the corpus directory's files and mtimes before training, after)."""
  workdir = str(tmp_path_factory.mktemp("dit") / "run")
  before = listing(corpus_path)
  result = subprocess.run(
      [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/dit.py:tiny", f"--workdir={workdir}",
       f"--config.data.path={corpus_path}", "--config.train.steps=30", *FAST],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, before, listing(corpus_path)


@pytest.fixture(scope="module")
def trained(training):
  return training[0]


@pytest.mark.slow
def test_tiny_trains_and_loss_falls(trained):
  with open(os.path.join(trained, "metrics.jsonl")) as f:
    losses = [row["loss"] for row in map(json.loads, f) if "loss" in row]
  assert len(losses) >= 25 and np.isfinite(losses).all()
  assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:5]), losses


@pytest.mark.slow
def test_vocabulary_goes_to_the_workdir_not_the_dataset(training, corpus_path):
  workdir, before, after = training
  assert after == before  # the input dataset is only read
  tokens = vocab.read(vocab.in_workdir(workdir))
  assert tokens == vocab.of_dataset(corpus_path)  # built from the train transcripts
  assert tokens[0] == " " and "a" in tokens and len(tokens) == len(set(tokens))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["data"]["vocab_file"] == vocab.in_workdir(workdir)


@pytest.mark.slow
def test_synthesize_writes_the_generated_part(trained, corpus_path, tmp_path, capsys):
  source = tfds_io.data_source(corpus_path, "validation")
  # the shortest of the first clips: well under the 6 s asked for
  record = min((source[i] for i in range(min(20, len(source)))), key=lambda r: len(r["audio"]))
  ref = tmp_path / "ref.wav"
  soundfile.write(ref, record["audio"], int(record["sample_rate"]))
  out = tmp_path / "out.wav"
  code = cli.main(["dit", "synthesize", "--dit", trained, "--ref-audio", str(ref), "--ref-text", record["text"].decode(),
                   "--text", "Hello there.", "--duration", "6", "--nfe", "4", "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  wav, rate = soundfile.read(out)
  ref_frames = int(len(record["audio"]) * 24000 / int(record["sample_rate"])) // 256
  assert rate == 24000 and np.isfinite(wav).all()
  # 6 s in all, minus the reference (± the resampler's rounding of one frame)
  assert abs(len(wav) / 256 - (int(6 * 24000 / 256) - ref_frames - 1)) <= 1.5


@pytest.mark.slow
def test_zero_shot_eval_scores_unseen_speakers(trained, corpus_path, tmp_path, capsys):
  out = tmp_path / "eval.json"
  code = cli.main(["dit", "eval", "--dit", trained, "--data-dir", corpus_path, "--split", "test_unseen",
                   "--limit", "2", "--nfe", "2", "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  rows = json.loads(out.read_text())["utterances"]
  source = tfds_io.data_source(corpus_path, "test_unseen")
  for r in rows:
    prompt = source[r["prompt"]]
    assert prompt["speaker"].decode() == r["speaker"]
    assert r["prompt"] != r["index"] or sum(source[i]["speaker"] == prompt["speaker"]
                                            for i in range(len(source))) == 1
    assert np.isfinite(r["mcd_dtw"]) and r["duration_ratio"] > 0 and r["rtf"] > 0


@pytest.mark.slow
def test_consistency_distillation_trains_the_student_and_keeps_the_teacher(trained, corpus_path, tmp_path, capsys):
  """configs/dit.py:consistency_tiny from the trained DiT: the teacher stays the trained DiT's params, the
  student moves from them, the few-step sampler speaks, and the F5 export holds the student alone."""
  workdir = str(tmp_path / "distilled")
  result = subprocess.run(
      [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/dit.py:consistency_tiny",
       f"--workdir={workdir}", f"--config.data.path={corpus_path}", f"--config.train.init_from={trained}",
       "--config.train.steps=3", *FAST],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  teacher = Workdir(trained).read_params(weights="auto").params   # init_from reads the EMA
  student = Workdir(workdir).read_params(weights="params").params
  assert vocab.read(vocab.in_workdir(workdir)) == vocab.read(vocab.in_workdir(trained))
  assert student.keys() == teacher.keys() | {f"teacher.{k}" for k in teacher}
  for k, v in teacher.items():
    np.testing.assert_array_equal(student[f"teacher.{k}"], v)
  assert any(not np.array_equal(student[k], v) for k, v in teacher.items())
  out = tmp_path / "out.wav"
  record = tfds_io.data_source(corpus_path, "validation")[0]
  ref = tmp_path / "ref.wav"
  soundfile.write(ref, record["audio"], int(record["sample_rate"]))
  code = cli.main(["dit", "synthesize", "--dit", workdir, "--ref-audio", str(ref), "--ref-text",
                   record["text"].decode(), "--text", "Hello there.", "--method", "consistency", "--nfe", "2",
                   "--cfg-strength", "0", "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  assert np.isfinite(soundfile.read(out)[0]).all()
  exported = tmp_path / "student.safetensors"
  assert cli.main(["convert", "dit", "--to", "f5", "--src", workdir, "--dst", str(exported)]) == 0
  keys = safetensors.numpy.load_file(str(exported)).keys()
  assert keys and not any("teacher" in k for k in keys)


@pytest.mark.parametrize("variant", list(SIZES))
def test_every_config_variant_builds(variant):
  cfg = config_from(convert.load_config(f"{ROOT}/configs/dit.py:{variant}").model.to_dict())
  params = nnx.state(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0))), nnx.Param)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  if variant == "base":  # F5TTS_v1_Base: about 336M params (its vocab of 2545 characters included)
    assert 330e6 < count < 340e6, count
  assert count > 0


def test_an_unknown_model_field_is_refused_by_name():
  model = convert.load_config(f"{ROOT}/configs/dit.py:tiny").model.to_dict()
  with pytest.raises(ValueError, match="unknown dit model field.*conv_layer"):
    config_from({**model, "conv_layer": 4})  # a typo of conv_layers
  assert config_from(model).conv_layers == model["conv_layers"]
