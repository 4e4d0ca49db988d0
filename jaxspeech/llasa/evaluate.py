"""Llasa synthesis on held-out corpus sentences, scored against the recordings (`jaxspeech.audio.quality`).

`synthesis_rows` speaks each sentence with the LM and the codec; `resynthesis_rows` passes each recording
through the codec (encode → decode), which bounds what an LM writing this codec's codes can reach.
"""

import time
import os

import numpy as np
import soundfile
import jax
import jax.numpy as jnp
from flax import nnx

from jaxspeech.audio import quality
from jaxspeech.audio import io as audio_io
from jaxspeech.data import tfds_io
from jaxspeech.llasa import generate, synthesis

METRICS = ("mcd_dtw", "duration_ratio", "speaker_similarity")


def rows(speak, data_path: str, split: str, *, count: int, sample_rate: int, embed=None,
         wav_dir: str | None = None) -> list[dict]:
  """One scored row per utterance of the first `count` of `split`; `speak(text, truth_S, i) -> wav` makes the
  audio (`sample_rate` Hz, written to `wav_dir/{split}_{i}.wav` when given) and `wall_seconds` is how long it
  took."""
  source = tfds_io.data_source(data_path, split)
  out = []
  for i in range(min(count, len(source))):
    record = source[i]
    text = record["text"].decode()
    truth_S = audio_io.resample(audio_io.to_float(record["audio"]), int(record["sample_rate"]), sample_rate)
    start = time.perf_counter()
    wav_S = np.asarray(speak(text, truth_S, i), np.float32)
    wall = time.perf_counter() - start
    if wav_dir:
      os.makedirs(wav_dir, exist_ok=True)
      soundfile.write(os.path.join(wav_dir, f"{split}_{i:03d}.wav"), np.clip(wav_S, -1, 1), sample_rate)
    out.append({"index": i, "speaker": record["speaker"].decode(), "text": text, "wall_seconds": wall,
                **quality.score(truth_S, wav_S, sample_rate, embed)})
  return out


def synthesis_rows(lm, codec, tokenizer, vocab, data_path: str, split: str, key, *, count: int = 16,
                   max_seconds: float = 20.0, embed=None, sampling=None, best_of: int = 1,
                   sample_rate: int = 16_000, wav_dir: str | None = None) -> list[dict]:
  """`rows` of the LM's speech (sentence i sampled with `fold_in(key, i)`; `best_of` > 1: the length/repetition
  verifier's best of that many). `sample_rate` is the codec's."""

  def speak(text, truth_S, i):
    del truth_S
    return synthesis.synthesize(lm, codec, tokenizer, vocab, text, jax.random.fold_in(key, i),
                                max_seconds=max_seconds, best_of=best_of, sampling=sampling or generate.Sampling(),
                                sample_rate=sample_rate).wav
  return rows(speak, data_path, split, count=count, sample_rate=sample_rate, embed=embed, wav_dir=wav_dir)


def resynthesis_rows(codec, data_path: str, split: str, *, count: int = 16, embed=None, sample_rate: int = 16_000,
                     wav_dir: str | None = None) -> list[dict]:
  """`rows` of the codec's encode → decode of each recording, cut to whole codes. Recordings are zero-padded to
  whole seconds for the jitted round trip (one compilation per length in seconds)."""
  if getattr(codec, "semantic", False):
    raise ValueError("resynthesis encodes audio: the codec's semantic branch needs w2v-BERT features; "
                     "use an acoustic-only codec")
  round_trip = nnx.jit(lambda codec, wav_1xS: codec.decode(codec.encode(wav_1xS)))

  def speak(text, truth_S, i):
    del text, i
    padded = -(-len(truth_S) // sample_rate) * sample_rate
    wav_S = round_trip(codec, jnp.pad(jnp.asarray(truth_S, jnp.float32), (0, padded - len(truth_S)))[None])[0]
    return wav_S[:-(-len(truth_S) // codec.hop) * codec.hop]
  return rows(speak, data_path, split, count=count, sample_rate=sample_rate, embed=embed, wav_dir=wav_dir)


def means(scored: list[dict]) -> dict[str, float]:
  return quality.means(scored, METRICS)


def evaluate_synthesis(lm, codec, tokenizer, vocab, data_path: str, split: str, key, **kwargs) -> dict[str, float]:
  """Means over the first `count` utterances of a speech dataset (`jaxspeech data synth`'s held-out splits) of
  MCD-DTW (dB) and duration ratio of the synthesized speech against the recording, and with `embed` (e.g.
  `verify.ast_embedder`) the speaker similarity to it. Keyword arguments as `synthesis_rows`."""
  return means(synthesis_rows(lm, codec, tokenizer, vocab, data_path, split, key, **kwargs))
