"""Trained codecs and vocoders out of their workdirs, and whole utterances through them in padded batches.

`restore` builds the generator alone (no discriminators) with the params of a workdir's newest checkpoint
(its EMA when it has one, as `jaxspeech eval` uses). `run_batched` runs a jitted function over utterances
padded to whole `bucket`s (few shapes, so few compiles), with the rows sharded over this host's devices.
"""

from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspeech.audio import io as audio_io
from jaxspeech.codec import losses
from jaxspeech.convert import mapping, workdir as workdir_lib


def restore(workdir: str, family: str, build: Callable[..., nnx.Module]
            ) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """(`build(model_config, rngs=...)` with `workdir`'s params, the model config)."""
  checkpoint = workdir_lib.read(workdir, family)
  model_cfg = ml_collections.ConfigDict(checkpoint.model)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build(model_cfg, rngs=nnx.Rngs(0))))
  params = {k: v for k, v in checkpoint.params.items() if not losses.is_discriminator(tuple(k.split(".")))}
  missing = mapping.param_shapes(state).keys() - params.keys()
  if missing:
    raise mapping.ConversionError(f"workdir {workdir}", [f"has no param {k}" for k in sorted(missing)])
  nnx.replace_by_pure_dict(state, mapping.unflatten({k: jnp.asarray(v) for k, v in params.items()}))
  return nnx.merge(graphdef, state), model_cfg


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
