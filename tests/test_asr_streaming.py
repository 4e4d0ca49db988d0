"""Cache-aware streaming (issue #19): a limited-context FastConformer fed chunk by chunk with its caches gives the
logits of offline inference on the whole utterance, its chunks really limit what a frame sees, and a model that
cannot stream is refused with what it lacks."""

import dataclasses
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from flax import nnx

from jaxspeech.asr import convert, inference, streaming
from jaxspeech.asr.model import SIZES, ASRConfig, FastConformerCTC
from jaxspeech.audio import features, io as audio_io
from jaxspeech.convert.mapping import ConversionError
from jaxspeech.data import tfds_io
from tests.helpers import ROOT

SMALL = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
             subsampling_conv_channels=8, vocab_size=11)
TOLERANCE = 1e-5  # float32 logits of order 1; measured ≤ 2e-7


def _model(**context) -> FastConformerCTC:
  cfg = dataclasses.replace(SIZES["tiny_streaming"], **SMALL, **context)
  model = FastConformerCTC(cfg, rngs=nnx.Rngs(0))
  for path, stat in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):  # running statistics away from 0 / 1
    stat.set_value(stat.get_value() + 0.3 * np.random.default_rng(len(path)).normal(size=stat.get_value().shape))
  return model


def _utterances(frames_B, mels=80, seed=0):
  t = max(frames_B)
  mel_BxTxM = np.random.default_rng(seed).normal(size=(len(frames_B), t, mels)).astype(np.float32)
  mel_BxTxM[np.arange(t)[None, :] >= np.asarray(frames_B)[:, None]] = 0
  return mel_BxTxM, np.asarray(frames_B, np.int32)


@pytest.mark.parametrize("context", [
    dict(subsampling_factor=4, att_context_left=8, att_context_right=3, conv_context_right=0),
    dict(subsampling_factor=8, att_context_left=4, att_context_right=1, conv_context_right=1),
    dict(subsampling_factor=4, att_context_left=0, att_context_right=0, conv_context_right=0),
    dict(subsampling_factor=4, att_context_left=6, att_context_right=2, conv_context_right=2),
])
def test_streaming_equals_offline(context):
  """Rows of different lengths (one ends mid-chunk, one after a few chunks), every chunk's logits."""
  model = _model(**context)
  mel_BxTxM, frames_B = _utterances([203, 150, 37])
  logits_BxNxV, valid_BxN = model(jnp.asarray(mel_BxTxM), np.arange(mel_BxTxM.shape[1]) < frames_B[:, None])
  streamed_BxSxV, streamed_valid_BxS = streaming.run(model, mel_BxTxM, frames_B)
  n = logits_BxNxV.shape[1]
  np.testing.assert_array_equal(streamed_valid_BxS[:, :n], np.asarray(valid_BxN))
  assert not streamed_valid_BxS[:, n:].any()
  valid = np.asarray(valid_BxN)
  np.testing.assert_allclose(streamed_BxSxV[:, :n][valid], np.asarray(logits_BxNxV)[valid], atol=TOLERANCE, rtol=0)


def test_a_frame_sees_its_chunk_and_nothing_later():
  """Offline, changing the input after chunk k leaves chunks ≤ k as they were; changing the last input frame
  that chunk k reads changes chunk k's first frame (the look-ahead) and nothing before; the same model with full
  context would see later chunks. (A causal subsampling's output frame j reads input frames up to factor × j.)"""
  model = _model(subsampling_factor=4, att_context_left=8, att_context_right=3, conv_context_right=1)
  size = streaming.chunk_frames(model.cfg)
  mel_1xTxM, frames_1 = _utterances([6 * size])
  mask_1xT = np.ones(mel_1xTxM.shape[:2], bool)
  base_1xNxV = np.asarray(model(jnp.asarray(mel_1xTxM), mask_1xT)[0])
  later = mel_1xTxM.copy()
  later[:, 3 * size:] += 1.0
  changed_N = np.abs(np.asarray(model(jnp.asarray(later), mask_1xT)[0]) - base_1xNxV).max((0, 2)) > 1e-6
  assert not changed_N[:3 * model.cfg.chunk].any() and changed_N[3 * model.cfg.chunk:].all()
  last_frame = mel_1xTxM.copy()
  chunk, factor = model.cfg.chunk, model.cfg.subsampling_factor
  last_frame[:, factor * (3 * chunk - 1)] += 1.0
  changed_N = np.abs(np.asarray(model(jnp.asarray(last_frame), mask_1xT)[0]) - base_1xNxV).max((0, 2)) > 1e-6
  assert changed_N[2 * chunk] and not changed_N[:2 * chunk].any()

  offline = FastConformerCTC(dataclasses.replace(model.cfg, att_context_left=-1, att_context_right=-1,
                                                 conv_context_right=-1), rngs=nnx.Rngs(0))
  nnx.update(offline, nnx.state(model))
  full_1xNxV = np.asarray(offline(jnp.asarray(later), mask_1xT)[0])
  assert np.abs(full_1xNxV - np.asarray(offline(jnp.asarray(mel_1xTxM), mask_1xT)[0]))[:, :chunk].max() > 1e-3


def test_models_that_cannot_stream_are_refused_with_what_they_lack():
  with pytest.raises(ValueError, match="att_context_right=-1 .*causal_downsampling=False.*normalize_features=True"):
    streaming.start(FastConformerCTC(dataclasses.replace(SIZES["tiny"], **SMALL), rngs=nnx.Rngs(0)), 1)
  with pytest.raises(ValueError, match="att_context_left=10 is not whole chunks of att_context_right \\+ 1 = 4"):
    ASRConfig(att_context_left=10, att_context_right=3).validate()
  with pytest.raises(ValueError, match="need chunks"):
    ASRConfig(conv_context_right=0).validate()
  with pytest.raises(ConversionError, match="att_context_right=7 \\(ParakeetForCTC has only -1\\).*normalize_features"):
    convert.hf_config(SIZES["tiny_streaming"])


def test_streaming_features_are_not_normalised_over_the_utterance():
  """With `normalize_features=False` a frame's features do not depend on later audio (streaming needs this)."""
  wav = np.random.default_rng(0).normal(size=(1, 16000)).astype(np.float32) * 0.1
  longer = np.concatenate([wav, np.ones((1, 8000), np.float32)], 1)
  short = np.asarray(features.parakeet_features(jnp.asarray(wav), normalize=False))
  long = np.asarray(features.parakeet_features(jnp.asarray(longer), normalize=False))
  frames = 16000 // 160 - 2  # the last frames read samples past the end
  np.testing.assert_allclose(long[:, :frames], short[:, :frames], atol=1e-5)
  normed = np.asarray(features.parakeet_features(jnp.asarray(longer)))
  assert np.abs(normed[:, :frames] - np.asarray(features.parakeet_features(jnp.asarray(wav)))[:, :frames]
                ).max() > 0.1


@pytest.mark.slow
def test_a_trained_streaming_workdir_transcribes_the_same_streamed(corpus_path, tmp_path):
  """`jaxspeech train --config=configs/asr.py:tiny_streaming` a few steps; the Recognizer's streamed logits
  equal its offline ones on real recordings, and `asr transcribe --stream` prints what `transcribe` does."""
  workdir = tmp_path / "asr"
  small = [f"--config.model.{k}={v}" for k, v in SMALL.items() if k != "vocab_size"]
  cmd = [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/asr.py:tiny_streaming",
         f"--workdir={workdir}", f"--config.data.path={corpus_path}", *small, "--config.data.frame_budget=8000",
         "--config.train.steps=4", "--config.train.eval_every=4", "--config.train.checkpoint_every=4"]
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  source = tfds_io.data_source(corpus_path, "test")
  rate = int(source[0]["sample_rate"])
  wavs = [audio_io.resample(source[i]["audio"].astype(np.float32) / 32768.0, rate, 16_000) for i in range(3)]
  offline, streamed = inference.Recognizer(str(workdir)), inference.Recognizer(str(workdir), stream=True)
  wav_BxS = np.zeros((3, max(map(len, wavs))), np.float32)
  for i, w in enumerate(wavs):
    wav_BxS[i, :len(w)] = w
  lengths_B = np.array([len(w) for w in wavs], np.int32)
  logits_BxNxV, valid_BxN = offline.logits(wav_BxS, lengths_B)
  s_logits_BxSxV, s_valid_BxS = streamed.logits(wav_BxS, lengths_B)
  n = logits_BxNxV.shape[1]
  np.testing.assert_array_equal(s_valid_BxS[:, :n], valid_BxN)
  np.testing.assert_allclose(s_logits_BxSxV[:, :n][valid_BxN], logits_BxNxV[valid_BxN], atol=1e-4, rtol=0)
  assert offline.transcribe(wavs, 16_000) == streamed.transcribe(wavs, 16_000)

  path = tmp_path / "a.wav"
  soundfile.write(path, source[0]["audio"], rate)
  printed = [subprocess.run([sys.executable, "-m", "jaxspeech.cli", "asr", "transcribe", "--asr", str(workdir),
                             *flag, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
             for flag in ([], ["--stream"])]
  assert all(p.returncode == 0 for p in printed), printed[1].stderr[-2000:]
  assert printed[0].stdout == printed[1].stdout
