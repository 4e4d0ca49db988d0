"""Streaming decode: codec codes turned into audio chunk by chunk as they arrive.

X-codec2's decoder sees the whole utterance: GroupNorm over time, bidirectional attention, and an ISTFT whose
frames overlap their neighbours. A chunk of `chunk` codes is therefore decoded inside a window of up to `left`
codes before it (recomputed each time, not carried as state) and `lookahead` codes after it, and only its own
samples are kept. A chunk's audio is ready once its look-ahead has arrived, so the latency past the first code
is (chunk + lookahead) / 50 s plus one decode of at most left + chunk + lookahead codes. Whole-utterance decoding
is the limit of left and lookahead covering the utterance (`benchmarks/codec_streaming.py` measures the gap).
"""

import dataclasses
import functools
import time
from collections.abc import Iterable

import jax
import numpy as np
import soundfile
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Window:
  """Codes [start, end) decoded to emit the samples of codes [emit_start, emit_end)."""
  start: int
  end: int
  emit_start: int
  emit_end: int


def window(emit_start: int, emit_end: int, available: int, left: int, lookahead: int) -> Window:
  return Window(max(0, emit_start - left), min(available, emit_end + lookahead), emit_start, emit_end)


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, codes_1xN: jax.Array) -> jax.Array:
  return nnx.merge(graphdef, state).decode(codes_1xN)[0]


class Streamer:
  """`push` codes as they come and get the audio that is ready; `flush` at the end of the utterance. `context`:
  codes before the first that serve as left context only (a voice prompt's reference clip).

  One compile per window length (shared by every streamer of the same codec): the first ⌈left / chunk⌉ chunks
  (their left context still filling), the steady state, and the last chunk.
  """

  def __init__(self, codec, *, chunk: int = 25, left: int = 150, lookahead: int = 2, context=()):
    if chunk < 1 or left < 0 or lookahead < 0:
      raise ValueError(f"streaming needs chunk ≥ 1 and left, lookahead ≥ 0; got {chunk}, {left}, {lookahead}")
    self.chunk, self.left, self.lookahead = chunk, left, lookahead
    self.hop = codec.hop
    self._graphdef, self._state = nnx.split(codec)
    self.codes: list[int] = [int(c) for c in np.asarray(context).reshape(-1)]
    self.emitted = len(self.codes)   # codes whose audio has been returned (or is not wanted: `context`)

  def _emit(self, end: int) -> np.ndarray:
    w = window(self.emitted, end, len(self.codes), self.left, self.lookahead)
    wav_S = _decode(self._graphdef, self._state, np.asarray(self.codes[w.start:w.end], np.int32)[None])
    self.emitted = end
    return np.asarray(wav_S[(w.emit_start - w.start) * self.hop:(w.emit_end - w.start) * self.hop])

  def push(self, codes) -> list[np.ndarray]:
    """The audio of each chunk now complete with its look-ahead (often none)."""
    self.codes.extend(int(c) for c in np.asarray(codes).reshape(-1))
    out = []
    while len(self.codes) - self.emitted >= self.chunk + self.lookahead:
      out.append(self._emit(self.emitted + self.chunk))
    return out

  def flush(self) -> list[np.ndarray]:
    """The audio of each chunk not yet returned (the utterance has ended: no more look-ahead will come)."""
    out = []
    while self.emitted < len(self.codes):
      out.append(self._emit(min(len(self.codes), self.emitted + self.chunk)))
    return out


def pieces(streamer: Streamer, codes_N) -> Iterable[np.ndarray]:
  """`streamer`'s audio chunks as `codes_N` is pushed one code at a time, then flushed: each as soon as it is ready."""
  for c in np.asarray(codes_N).reshape(-1):
    yield from streamer.push(c)
  yield from streamer.flush()


def decode(codec, codes_N, *, chunk: int = 25, left: int = 150, lookahead: int = 2) -> list[np.ndarray]:
  """The audio of `codes_N` pushed one code at a time: one array per chunk, in order."""
  return list(pieces(Streamer(codec, chunk=chunk, left=left, lookahead=lookahead), codes_N))


def write(path: str, chunks: Iterable[np.ndarray], sample_rate: int) -> tuple[int, float | None]:
  """Writes each chunk to the 16-bit wav at `path` as it comes (clipped to [−1, 1], flushed to disk): (samples
  written, seconds until the first chunk was written, None if none came)."""
  start, first, samples = time.perf_counter(), None, 0
  with soundfile.SoundFile(path, "w", sample_rate, 1, subtype="PCM_16") as out:
    for chunk in chunks:
      out.write(np.clip(chunk, -1, 1))
      out.flush()
      samples += len(chunk)
      first = first or time.perf_counter() - start
  return samples, first
