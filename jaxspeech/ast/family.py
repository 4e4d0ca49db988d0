"""AST as a family: speaker classification from Kaldi fbanks computed on the device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxspeech.ast.model import AST, ASTConfig
from jaxspeech.audio import features
from jaxspeech.data import batching, pipeline, tfds_io
from jaxspeech.train.family import Family

SAMPLE_RATE = 16_000
HOP = 160      # 10 ms frame shift at 16 kHz
WINDOW = 400   # 25 ms


def model_config(cfg) -> ASTConfig:
  return ASTConfig(**cfg.model.to_dict())


def crop_samples(cfg) -> int:
  """Samples that give exactly `model.max_frames` Kaldi frames."""
  return WINDOW + HOP * (cfg.model.max_frames - 1)


def fbank(batch, cfg) -> jax.Array:
  """Normalised (B, max_frames, mel) Kaldi fbank of the padded audio, zero past each clip's end."""
  fb_BxTxF, frames_B = features.kaldi_fbank(batch["audio"], SAMPLE_RATE, cfg.model.num_mel_bins,
                                            lengths_B=batch["audio_lengths"])
  fb_BxTxF = features.pad_or_crop_frames(fb_BxTxF, cfg.model.max_frames, frames_B)
  return features.ast_normalize(fb_BxTxF).astype(cfg.model.dtype)


def _per_example(model, batch, cfg):
  logits_BxC = model(fbank(batch, cfg))
  labels_B = batch["speaker_id"]
  ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
  correct_B = (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)
  return ce_B, correct_B, batch["valid"].astype(jnp.float32)


def loss(model, batch, key, cfg):
  del key
  ce_B, correct_B, valid_B = _per_example(model, batch, cfg)
  n = jnp.maximum(valid_B.sum(), 1.0)
  return (ce_B * valid_B).sum() / n, {"accuracy": (correct_B * valid_B).sum() / n}


def evaluate(model, batch, cfg):
  ce_B, correct_B, valid_B = _per_example(model, batch, cfg)
  return {"loss": ((ce_B * valid_B).sum(), valid_B.sum()), "accuracy": ((correct_B * valid_B).sum(), valid_B.sum())}


def make_data(cfg, split, *, train, shard_index, shard_count):
  source = tfds_io.data_source(cfg.data.path, split)
  size = crop_samples(cfg)
  if cfg.train.batch_size % shard_count:
    raise ValueError(f"train.batch_size={cfg.train.batch_size} does not split over {shard_count} hosts")
  fixed = batching.FixedBatch(cfg.train.batch_size // shard_count, "audio", batching.Buckets((size,)),
                              drop_remainder=train)
  return pipeline.make_pipeline(
      source, seed=cfg.seed, map_fn=pipeline.DecodeSpeech(SAMPLE_RATE, crop_samples=size), batching=fixed,
      shard_index=shard_index, shard_count=shard_count, shuffle=train, num_epochs=None if train else 1,
      worker_count=cfg.data.worker_count)


def batch_axes(cfg):
  del cfg
  rows = ("activation_batch",)
  return {"audio": rows + (None,), "audio_lengths": rows, "speaker_id": rows, "valid": rows}


def train_flops(cfg) -> float:
  """Forward + backward (3× forward) matmul FLOPs of one global batch."""
  m = model_config(cfg)
  f, t = m.grid()
  n, d = f * t + 2, m.hidden
  per_layer = 2 * n * 4 * d * d + 2 * 2 * n * n * d + 2 * 2 * n * d * m.mlp
  forward = 2 * f * t * m.patch * m.patch * d + m.layers * per_layer + 2 * d * m.num_classes
  return 3.0 * forward * cfg.train.batch_size


def units(batch) -> dict[str, float]:
  valid = np.asarray(batch["valid"])
  return {"examples": float(valid.sum()), "frames": float(np.asarray(batch["audio_lengths"])[valid].sum() / HOP)}


FAMILY = Family(
    name="ast", build_model=lambda cfg, rngs: AST(model_config(cfg), rngs), loss=loss, evaluate=evaluate,
    make_data=make_data, batch_axes=batch_axes, train_flops=train_flops, units=units)
