"""Whole utterances through a codec in padded batches (load one with `Workdir(path).load_model(family.FAMILY)`:
the generator alone, with the newest checkpoint's params, its EMA when it has one). `run_batched` runs a jitted function over utterances
padded to whole `bucket`s (few shapes, so few compiles), with the rows sharded over this host's devices.
"""

from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspeech.audio import io as audio_io


def local_mesh() -> Mesh:
  """This host's devices on one `data` axis: each host encodes its own share, no cross-host collectives."""
  return Mesh(np.array(jax.local_devices()), ("data",))


def decode_audio(record, sample_rate: int) -> np.ndarray:
  """A corpus record's audio as float32 at `sample_rate`."""
  return audio_io.resample(audio_io.to_float(record["audio"]), int(record["sample_rate"]), sample_rate)


def padded_batches(wavs: Iterable[np.ndarray], rows: int, bucket: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(wav (rows, S) zero-padded to a multiple of `bucket`, lengths (rows,)); missing rows have length 0."""
  wavs = list(wavs)
  for start in range(0, len(wavs), rows):
    chunk = wavs[start:start + rows]
    lengths = np.zeros(rows, np.int32)
    lengths[:len(chunk)] = [len(w) for w in chunk]
    wav = np.zeros((rows, -(-int(lengths.max()) // bucket) * bucket), np.float32)
    for i, w in enumerate(chunk):
      wav[i, :len(w)] = w
    yield wav, lengths


def run_batched(fn: Callable[[jax.Array, jax.Array], object], wavs: Iterable[np.ndarray], *, per_device: int,
                bucket: int) -> Iterator[tuple[object, np.ndarray, np.ndarray]]:
  """(fn(wav_BxS, lengths_B) as numpy, wav_BxS, lengths_B) per padded batch, rows sharded over this host's
  devices."""
  mesh = local_mesh()
  rows = per_device * mesh.size
  jitted = jax.jit(fn, in_shardings=NamedSharding(mesh, PartitionSpec("data")))
  for wav, lengths in padded_batches(wavs, rows, bucket):
    yield jax.tree.map(np.asarray, jitted(wav, lengths)), wav, lengths
