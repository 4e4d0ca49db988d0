"""Transcribing audio with an asr workdir: `Recognizer(workdir).transcribe(wavs, sample_rate)`, the WER judge
of the TTS families' evaluations."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import soundfile
from flax import nnx

from jaxspeech.asr import evaluate as scoring, family, streaming, text
from jaxspeech.audio import features, io as audio_io
from jaxspeech.workdir import Workdir

BUCKET_SECONDS = 2.0  # clips are zero-padded to a multiple of this: one compile per bucket


class Recognizer:
  """An asr workdir's model (its EMA when it has one) with greedy CTC decoding; with `stream`, the model runs
  chunk by chunk with its caches (`jaxspeech.asr.streaming`), as a live stream would."""

  def __init__(self, workdir: str, weights: str = "auto", stream: bool = False):
    model, cfg = Workdir(workdir).load_model(family.FAMILY, weights=weights)
    self.tokenizer = text.of_workdir(workdir)
    self.config = family.model_config(cfg)
    graphdef, state = nnx.split(model)

    @jax.jit
    def mel(wav_BxS, lengths_B):
      return features.parakeet_features(wav_BxS, self.config.num_mel_bins, lengths_B=lengths_B,
                                        normalize=self.config.normalize_features, mean=self.config.feature_mean,
                                        std=self.config.feature_std)

    @jax.jit
    def logits(state, mel_BxTxM, frames_B):
      return nnx.merge(graphdef, state)(mel_BxTxM, jnp.arange(mel_BxTxM.shape[1]) < frames_B[:, None])

    self.features = mel  # (log-mel (B, T, M), valid frames (B,)) of 16 kHz clips, as the model was trained on
    if stream:
      step = streaming.compile_step(model)
      self._logits = lambda mel_BxTxM, frames_B: streaming.run(model, np.asarray(mel_BxTxM), np.asarray(frames_B),
                                                                step)
    else:
      self._logits = functools.partial(logits, state)

  def logits(self, wav_BxS: np.ndarray, lengths_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(CTC logits (B, N, V), valid (B, N)) of 16 kHz clips zero-padded to one width, `lengths_B` samples each
    (streamed: N is a whole number of chunks, the frames past the clip's output invalid)."""
    logits_BxNxV, valid_BxN = self._logits(*self.features(wav_BxS, lengths_B))
    return np.asarray(logits_BxNxV), np.asarray(valid_BxN)

  def transcribe(self, wavs: list[np.ndarray], sample_rate: int, batch_size: int = 8) -> list[str]:
    """The transcript of each mono clip (float in [-1, 1] at `sample_rate`)."""
    clips = [audio_io.resample(np.asarray(w, np.float32), sample_rate, family.SAMPLE_RATE) for w in wavs]
    order = np.argsort([len(c) for c in clips])
    out = [""] * len(clips)
    bucket = int(BUCKET_SECONDS * family.SAMPLE_RATE)
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = -(-max(len(clips[i]) for i in rows) // bucket) * bucket
      wav_BxS = np.zeros((batch_size, width), np.float32)
      lengths_B = np.zeros(batch_size, np.int32)
      for j, i in enumerate(rows):
        wav_BxS[j, :len(clips[i])], lengths_B[j] = clips[i], len(clips[i])
      lengths_B[len(rows):] = family.HOP * 2  # padding rows: a few frames of silence, not an empty utterance
      logits_BxNxV, valid_BxN = self.logits(wav_BxS, lengths_B)
      for j, ids in enumerate(text.greedy(np.asarray(logits_BxNxV), np.asarray(valid_BxN), self.config.blank_id)):
        if j < len(rows):
          out[rows[j]] = self.tokenizer.decode(ids)
    return out


def judge(recognizer: Recognizer, rows: list[dict], wav_dir: str, split: str, sample_rate: int) -> dict[str, float]:
  """The intelligibility of synthesized speech: each row's clip (`wav_dir/{split}_{index:03d}.wav`, as the TTS
  evaluations write them) transcribed, its `transcript`, `wer` and `cer` added to the row; returns the corpus
  WER and CER (errors summed over the rows' reference words and characters)."""
  wavs = [soundfile.read(os.path.join(wav_dir, f"{split}_{r['index']:03d}.wav"), dtype="float32")[0] for r in rows]
  for row, hyp in zip(rows, recognizer.transcribe(wavs, sample_rate)):
    row["transcript"] = hyp
    row.update({k: e / max(n, 1) for k, (e, n) in scoring.errors(hyp, row["text"]).items()})
  return scoring.rates((r["transcript"], r["text"]) for r in rows)
