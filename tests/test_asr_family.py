"""The asr family around its model: CTC targets, greedy decoding, WER/CER, SpecAugment, the pipeline's CTC
feasibility filter, BatchNorm statistics carried by the train step, and a workdir that transcribes."""

import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import soundfile
import torch
import transformers
from flax import nnx

from jaxspeech.asr import evaluate, family, inference, text
from jaxspeech.audio import io as audio_io
from jaxspeech.data import tfds_io
from jaxspeech.train import config, optim, state as state_lib, step as step_lib
from jaxspeech.workdir import Workdir
from tests.helpers import ROOT

TINY = ["--config.model.hidden_size=32", "--config.model.intermediate_size=64", "--config.model.num_hidden_layers=2",
        "--config.model.num_attention_heads=2", "--config.model.subsampling_conv_channels=8",
        "--config.data.frame_budget=8000"]


def _reference_distance(a, b) -> int:
  """Levenshtein distance by plain recursion over prefixes (memoised): the textbook definition."""
  memo = {}

  def d(i, j):
    if (i, j) not in memo:
      memo[i, j] = j if i == 0 else i if j == 0 else min(d(i - 1, j) + 1, d(i, j - 1) + 1,
                                                          d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
    return memo[i, j]
  return d(len(a), len(b))


def test_edit_distance_is_levenshtein():
  rng = np.random.default_rng(0)
  for _ in range(200):
    a, b = (list(rng.choice(list("abc"), rng.integers(0, 9))) for _ in range(2))
    assert evaluate.edit_distance(a, b) == _reference_distance(a, b), (a, b)


def test_wer_and_cer_of_normalised_text():
  assert evaluate.errors("Hello, World!", "hello world") == {"wer": (0, 2), "cer": (0, 11)}
  assert evaluate.errors("the cat sat", "the cat sat down") == {"wer": (1, 4), "cer": (5, 16)}
  assert evaluate.rates([("a b", "a b"), ("x", "a b c d")]) == {"wer": 4 / 6, "cer": 7 / 10}


def test_characters_round_trip_and_greedy_decoding_merges_repeats_and_drops_blanks():
  chars = text.Characters()
  assert chars.decode(chars.encode("It's 4 o'clock, Bob!")) == "it's o'clock bob"
  blank = chars.vocab_size
  frames = [7, 7, blank, 7, 0, 0, blank, blank, 8, 8]
  logits = np.eye(blank + 1)[frames][None]
  assert text.greedy(logits, np.ones((1, 10), bool), blank) == [[7, 7, 0, 8]]
  assert text.greedy(logits, np.arange(10)[None] < 4, blank) == [[7, 7]]


def test_spec_augment_masks_bands_and_spans_within_each_utterance():
  a = ml_collections.ConfigDict(dict(freq_masks=2, freq_width=5, time_masks=3, time_width=0.1))
  mel = jnp.ones((4, 200, 40))
  mask = jnp.arange(200) < jnp.array([200, 150, 100, 50])[:, None]
  out = np.asarray(family.spec_augment(mel, mask, jax.random.PRNGKey(0), a))
  assert out.shape == mel.shape and set(np.unique(out)) <= {0.0, 1.0}
  bins = (out == 0).all(1)                      # whole frequency bands
  frames = (out == 0).all(2)                    # whole time spans
  assert (bins.sum(1) <= 2 * 5).all() and (frames.sum(1) <= 3 * np.maximum(1, [20, 15, 10, 5])).all()
  assert ((out == 0) == (bins[:, None, :] | frames[:, :, None])).all()
  assert not frames[3, 50 + 5:].any()           # spans start inside the utterance
  assert not np.array_equal(out, np.asarray(family.spec_augment(mel, mask, jax.random.PRNGKey(1), a)))


def _cfg(corpus_path, *overrides):
  return config.load(os.path.join(ROOT, "configs", "asr.py:tiny"),
                     [f"--config.data.path={corpus_path}", *TINY, *overrides])


def test_pipeline_skips_and_counts_what_ctc_cannot_align(corpus_path):
  cfg = _cfg(corpus_path)
  source = tfds_io.data_source(corpus_path, "train")
  add = family.AddPieces(cfg)
  record = source[0]
  wav = np.zeros(int(0.5 * family.SAMPLE_RATE), np.float32)  # 12 output frames at 4× subsampling
  assert add({"audio": wav}, {**record, "text": b"ab"})["text"].tolist() == [1, 2]
  assert add({"audio": wav}, {**record, "text": b"a" * 8}) is None  # 8 pieces and 7 blanks between repeats
  assert add({"audio": wav}, {**record, "text": b"abababababababab"}) is None
  assert add({"audio": wav}, {**record, "text": b"?!"}) is None    # nothing to recognise


@pytest.mark.parametrize("accum", [1, 2])
def test_train_step_carries_batchnorm_statistics(corpus_path, accum):
  """The step's `rest` (the conv modules' running statistics) comes back updated, through accumulation too."""
  cfg = _cfg(corpus_path, f"--config.optim.accum_steps={accum}")
  fam = family.FAMILY
  graphdef, params, rest = state_lib.abstract_model(fam, cfg)
  tx, schedules = optim.make(cfg.optim, cfg.train.steps, params, fam.param_groups)
  init = state_lib.make_init(fam, cfg, tx)
  state = init(0)
  batch = next(iter(fam.make_data(cfg, "train", train=True, shard_index=0, shard_count=1)))
  train_step = step_lib.make_train_step(fam, cfg, graphdef, tx, schedules, None, None)
  before = jax.tree.map(np.asarray, state.rest)
  new_state, metrics = train_step(state, {k: jnp.asarray(v) for k, v in batch.items()})
  assert bool(metrics["finite"])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(b) - a).max()), before, new_state.rest))
  assert len(moved) == 2 * cfg.model.num_hidden_layers and min(moved) > 0


@pytest.mark.slow
def test_a_trained_workdir_transcribes_as_its_eval_scores(corpus_path, tmp_path):
  """`jaxspeech train` a few steps, then the workdir: BatchNorm statistics come back with its params, the
  Recognizer transcribes, `asr eval` writes its table, and `convert asr --to hf` gives a ParakeetForCTC
  (`from_pretrained`) with our logits, 1e-4 abs in float32."""
  workdir = tmp_path / "asr"
  cmd = [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/asr.py:tiny", f"--workdir={workdir}",
         f"--config.data.path={corpus_path}", *TINY, "--config.train.steps=6", "--config.train.eval_every=6",
         "--config.train.checkpoint_every=6", "--config.train.log_every=3"]
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "eval/wer" in result.stdout and "eval/cer" in result.stdout
  read = Workdir(str(workdir)).read_params("asr")
  assert len(read.rest) == 4 and all(np.abs(v).sum() > 0 for v in read.rest.values())
  recognizer = inference.Recognizer(str(workdir))
  model, _ = Workdir(str(workdir)).load_model(family.FAMILY)
  for path, value in itertools.islice(nnx.to_flat_state(nnx.state(model, nnx.BatchStat)), 4):
    np.testing.assert_array_equal(np.asarray(value.get_value()), read.rest[".".join(map(str, path))])
  source = tfds_io.data_source(corpus_path, "test")
  record = source[0]
  hyp = recognizer.transcribe([record["audio"].astype(np.float32) / 32768.0], int(record["sample_rate"]))
  assert isinstance(hyp[0], str)
  # the TTS evaluations' judge: the clips they wrote, transcribed and scored against their rows' text
  soundfile.write(tmp_path / "test_007.wav", record["audio"], int(record["sample_rate"]))
  rows = [{"index": 7, "text": record["text"].decode()}]
  rates = inference.judge(recognizer, rows, str(tmp_path), "test", int(record["sample_rate"]))
  assert rows[0]["transcript"] == hyp[0]
  assert rates == {k: rows[0][k] for k in ("wer", "cer")} == {
      k: e / n for k, (e, n) in evaluate.errors(hyp[0], record["text"].decode()).items()}
  out = tmp_path / "eval.json"
  result = subprocess.run([sys.executable, "-m", "jaxspeech.cli", "asr", "eval", "--asr", str(workdir),
                           "--data-dir", corpus_path, "--limit", "3", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "WER" in result.stdout and out.exists()

  # exported through the CLI, the run is a ParakeetForCTC whose logits (on HF's own features) are ours
  hf_dir = tmp_path / "hf"
  result = subprocess.run([sys.executable, "-m", "jaxspeech.cli", "convert", "asr", "--to", "hf", "--src",
                           str(workdir), "--dst", str(hf_dir)], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  hf = transformers.ParakeetForCTC.from_pretrained(hf_dir).eval()
  wav = record["audio"].astype(np.float32) / 32768.0
  wav = audio_io.resample(wav, int(record["sample_rate"]), family.SAMPLE_RATE)
  inputs = transformers.ParakeetFeatureExtractor()([wav], sampling_rate=16000, return_tensors="pt",
                                                   return_attention_mask=True)
  with torch.no_grad():
    theirs = hf(input_features=inputs["input_features"], attention_mask=inputs["attention_mask"]).logits.numpy()
  mel = jnp.asarray(inputs["input_features"].numpy())
  ours, valid = model(mel, jnp.asarray(inputs["attention_mask"].numpy().astype(bool)))
  valid = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(ours)[valid], theirs[valid], rtol=0, atol=1e-4)
