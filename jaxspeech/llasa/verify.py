"""Verifiers for inference-time scaling (the Llasa paper): score synthesized candidates, keep the best.

A verifier is any callable `Candidate -> float` (higher is better) with a `name`; `best_of_n` sums the
weighted scores. Two are provided: `LengthRepetition` (a sanity check that needs no model) and
`SpeakerSimilarity` (cosine between AST embeddings of the candidate and the reference clip).
"""

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import jax.numpy as jnp

from jaxspeech.ast import family as ast_family
from jaxspeech.workdir import Workdir

CODE_RATE = 50  # codec codes per second


@dataclasses.dataclass
class Candidate:
  text: str
  codes: np.ndarray               # (N,) codec codes
  wav: np.ndarray | None = None   # decoded audio, float32 at `sample_rate`
  sample_rate: int = 16_000


class Verifier(Protocol):
  name: str

  def __call__(self, candidate: Candidate) -> float: ...


@dataclasses.dataclass(frozen=True)
class LengthRepetition:
  """−|log(duration / expected)| − (share of repeated code n-grams): penalises truncated, run-on and looping speech.

  `seconds_per_char` is the expected speaking rate (about 14 characters per second for read English).
  """
  seconds_per_char: float = 0.07
  ngram: int = 4
  name: str = "length_repetition"

  def __call__(self, candidate: Candidate) -> float:
    codes = np.asarray(candidate.codes)
    if len(codes) == 0:
      return -np.inf
    duration = len(codes) / CODE_RATE
    expected = max(len(candidate.text), 1) * self.seconds_per_char
    grams = [tuple(codes[i:i + self.ngram]) for i in range(max(len(codes) - self.ngram + 1, 1))]
    repeated = 1.0 - len(set(grams)) / len(grams)
    return float(-abs(np.log(duration / expected)) - repeated)


class SpeakerSimilarity:
  """Cosine similarity of mean-pooled AST patch embeddings (`embed(wav) -> (D,)`) to the reference clip's."""
  name = "speaker_similarity"

  def __init__(self, embed, reference_wav: np.ndarray):
    self.embed = embed
    self.reference = self._unit(embed(reference_wav))

  @staticmethod
  def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / max(np.linalg.norm(x), 1e-12)

  def __call__(self, candidate: Candidate) -> float:
    if candidate.wav is None or len(candidate.wav) == 0:
      return -1.0
    return float(self._unit(self.embed(candidate.wav)) @ self.reference)


def ast_embedder(ast_workdir: str):
  """`embed(wav_S) -> (D,)` of an AST workdir (16 kHz audio): the mean of its final-norm patch tokens."""
  model, cfg = Workdir(ast_workdir).load_model(ast_family.FAMILY)
  encoder = getattr(model, "encoder", model)  # an SSAST run holds its AST as `encoder`

  def embed(wav_S: np.ndarray) -> np.ndarray:
    wav_1xS = jnp.asarray(wav_S, jnp.float32)[None]
    fbank_1xTxF = ast_family.fbank({"audio": wav_1xS, "audio_lengths": jnp.array([wav_1xS.shape[1]])}, cfg)
    return np.asarray(encoder.features(fbank_1xTxF)[0, 2:].mean(0))
  return embed


def best_of_n(candidates: Sequence[Candidate], verifiers: Sequence[Verifier],
              weights: Sequence[float] | None = None) -> tuple[int, list[dict[str, float]]]:
  """(index of the best candidate, every candidate's scores by verifier name plus their weighted "total")."""
  weights = [1.0] * len(verifiers) if weights is None else list(weights)
  scores = []
  for candidate in candidates:
    row = {v.name: v(candidate) for v in verifiers}
    row["total"] = float(sum(w * row[v.name] for w, v in zip(weights, verifiers)))
    scores.append(row)
  return int(np.argmax([s["total"] for s in scores])), scores
