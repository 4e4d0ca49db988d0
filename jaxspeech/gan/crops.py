"""The data of a GAN-trained waveform family (the codec, the vocoder): fixed-size batches of random crops."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxspeech.data import batching, pipeline


def crop_samples(seconds: float, sample_rate: int, frame: int) -> int:
  """`seconds` at `sample_rate`, rounded down to whole `frame`s (hops)."""
  return int(seconds * sample_rate) // frame * frame


def make_data(cfg: ml_collections.ConfigDict, split: str, *, train: bool, shard_index: int, shard_count: int,
              sample_rate: int, frame: int):
  """Batches of crops of `data.crop_seconds` (eval: `data.eval_crop_seconds`) in whole `frame`s at
  `sample_rate`."""
  seconds = cfg.data.crop_seconds if train else cfg.data.eval_crop_seconds
  size = crop_samples(seconds, sample_rate, frame)
  fixed = batching.FixedBatch(pipeline.host_batch_size(cfg, shard_count), "audio", batching.Buckets((size,)),
                              drop_remainder=train)
  return pipeline.for_family(cfg, split, train=train, shard_index=shard_index, shard_count=shard_count,
                             map_fn=pipeline.DecodeSpeech(sample_rate, crop_samples=size), batching=fixed)


def frames_per_step(cfg: ml_collections.ConfigDict, sample_rate: int, frame: int) -> float:
  """Frames (codes, or vocoder hops) in one global batch of training crops."""
  return float(cfg.train.batch_size * (crop_samples(cfg.data.crop_seconds, sample_rate, frame) // frame))


def batch_axes(cfg):
  del cfg
  rows = ("activation_batch",)
  return {"audio": rows + (None,), "audio_lengths": rows, "valid": rows}


def abstract_batch(cfg: ml_collections.ConfigDict, samples: int) -> dict[str, jax.ShapeDtypeStruct]:
  """One global batch of `samples`-long crops, without reading data."""
  b = cfg.train.batch_size
  return {"audio": jax.ShapeDtypeStruct((b, samples), jnp.float32),
          "audio_lengths": jax.ShapeDtypeStruct((b,), jnp.int32), "valid": jax.ShapeDtypeStruct((b,), jnp.bool_)}


def units(batch) -> dict[str, float]:
  valid = np.asarray(batch["valid"])
  return {"examples": float(valid.sum()), "samples": float(np.asarray(batch["audio_lengths"])[valid].sum())}
