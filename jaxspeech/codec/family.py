"""X-codec2 as a family: the codec and its two discriminators trained together by one GAN loss (`losses.gan_loss`).

The training model is the `Codec` with the discriminators beside its own modules, so a workdir's params are the
codec's at the top level (as `jaxspeech convert codec --from xcodec2` writes them) plus `discriminator.*` and
`spec_discriminator.*`. Data: random crops of `data.crop_seconds` (whole hops) resampled to `model.sample_rate`;
eval crops are `data.eval_crop_seconds` long. STOI and PESQ in `evaluate` run on the host (`codec.evaluate`).
"""

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxspeech.codec import evaluate as metrics_lib, losses, model as model_lib
from jaxspeech.codec.model import Codec
from jaxspeech.data import batching, pipeline, tfds_io
from jaxspeech.train.family import Family


class CodecGAN(Codec):
  def __init__(self, cfg: ml_collections.ConfigDict, gan: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    losses.add_discriminators(self, gan, rngs)


def build_model(cfg, rngs):
  """The codec with its discriminators; the codec alone for a config without `gan` (`jaxspeech convert`'s, whose
  workdirs hold the generator's params: training starts from them with `train.init_from`)."""
  if "gan" not in cfg:
    return Codec(cfg.model, rngs=rngs)
  return CodecGAN(cfg.model, cfg.gan, rngs=rngs)


def param_group(path: tuple[str, ...], leaf) -> str:
  """"frozen" for the w2v-BERT teacher's params (no update, no optimizer state), else the GAN player's group."""
  return "frozen" if model_lib.frozen(path) else losses.param_group(path, leaf)


def hop(cfg) -> int:
  return int(np.prod(cfg.model.encoder.strides))


def adversarial_on(batch, cfg) -> jax.Array:
  """1.0 once the generator-only warm-up (`gan.warmup_steps`) is over, read from the batch's `step`."""
  return (batch["step"][0] >= cfg.gan.warmup_steps).astype(jnp.float32)


def loss(model, batch, key, cfg):
  del key
  wav_BxS = batch["audio"]
  out = model(wav_BxS, batch.get("semantic_features"))
  total, metrics = losses.gan_loss(model, wav_BxS, out["wav"][:, :wav_BxS.shape[1]], cfg.gan,
                                   cfg.model.sample_rate, adversarial_on(batch, cfg))
  if model.semantic:
    semantic = jnp.mean((out["semantic_pred"] - out["semantic_target"]) ** 2)
    total += cfg.gan.semantic_weight * semantic
    metrics["semantic"] = semantic
  return total, metrics


def evaluate(model, batch, cfg):
  """Mel distance, STOI and wideband PESQ of each clip's valid samples (the last two on the host)."""
  wav_BxS, lengths_B, valid_B = batch["audio"], batch["audio_lengths"], batch["valid"].astype(jnp.float32)
  mask_BxS = jnp.arange(wav_BxS.shape[1]) < lengths_B[:, None]
  wav_hat_BxS = jnp.where(mask_BxS, model(wav_BxS, batch.get("semantic_features"))["wav"][:, :wav_BxS.shape[1]], 0)
  scores = {"mel_distance": losses.mel_distance(wav_BxS, wav_hat_BxS, cfg.model.sample_rate),
            **metrics_lib.host_scores(wav_BxS, wav_hat_BxS, lengths_B, valid_B, cfg.model.sample_rate)}
  return {k: ((v * valid_B).sum(), valid_B.sum()) for k, v in scores.items()}


class CountSteps(grain.IterDataset):
  """Adds `step` (int32 [B]): the batches this iterator gave before this one. The trainer takes one batch per
  step and the count is part of the iterator state, so after a resume it is still the trainer's step."""

  def __iter__(self):
    return _CountStepsIterator(self._parent.__iter__())


class _CountStepsIterator(grain.DatasetIterator):
  def __init__(self, parent):
    super().__init__(parent)
    self._count = 0

  def __next__(self):
    batch = next(self._parent)
    batch["step"] = np.full(len(batch["valid"]), self._count, np.int32)
    self._count += 1
    return batch

  def get_state(self):
    return {"parent": self._parent.get_state(), "count": self._count}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._count = int(state["count"])


def crop_samples(seconds: float, sample_rate: int, frame: int) -> int:
  return int(seconds * sample_rate) // frame * frame


def make_gan_data(cfg, split, *, train, shard_index, shard_count, sample_rate: int, frame: int):
  """Fixed-size batches of crops (whole `frame`s) at `sample_rate`, each with its `step`."""
  seconds = cfg.data.crop_seconds if train else cfg.data.eval_crop_seconds
  size = crop_samples(seconds, sample_rate, frame)
  if cfg.train.batch_size % shard_count:
    raise ValueError(f"train.batch_size={cfg.train.batch_size} does not split over {shard_count} hosts")
  fixed = batching.FixedBatch(cfg.train.batch_size // shard_count, "audio", batching.Buckets((size,)),
                              drop_remainder=train)
  ds = pipeline.make_pipeline(
      tfds_io.data_source(cfg.data.path, split), seed=cfg.seed,
      map_fn=pipeline.DecodeSpeech(sample_rate, crop_samples=size), batching=fixed, shard_index=shard_index,
      shard_count=shard_count, shuffle=train, num_epochs=None if train else 1, worker_count=cfg.data.worker_count)
  return CountSteps(ds)


def make_data(cfg, split, *, train, shard_index, shard_count):
  pipeline.require_speech(cfg.data.path, "the codec family")
  if cfg.model.semantic.enabled and not cfg.model.semantic.get("w2vbert"):
    raise ValueError("training the semantic branch on the corpus needs its w2v-BERT teacher (model.semantic.w2vbert: "
                     "configs/codec.py:tiny_semantic or base_w2vbert); or set --config.model.semantic.enabled=False")
  return make_gan_data(cfg, split, train=train, shard_index=shard_index, shard_count=shard_count,
                       sample_rate=cfg.model.sample_rate, frame=hop(cfg))


def batch_axes(cfg):
  del cfg
  rows = ("activation_batch",)
  return {"audio": rows + (None,), "audio_lengths": rows, "valid": rows, "step": rows}


def abstract_batch(cfg, samples: int) -> dict[str, jax.ShapeDtypeStruct]:
  b = cfg.train.batch_size
  return {"audio": jax.ShapeDtypeStruct((b, samples), jnp.float32),
          "audio_lengths": jax.ShapeDtypeStruct((b,), jnp.int32), "valid": jax.ShapeDtypeStruct((b,), jnp.bool_),
          "step": jax.ShapeDtypeStruct((b,), jnp.int32)}


def gan_train_flops(cfg, build, loss_fn, sample_rate: int, frame: int) -> float:
  """XLA's FLOP count of the loss's gradient on one global training batch (generator and discriminators)."""
  graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0))), nnx.Param, ...)
  samples = crop_samples(cfg.data.crop_seconds, sample_rate, frame)
  grad = jax.grad(lambda p, b: loss_fn(nnx.merge(graphdef, p, rest), b, None, cfg)[0])
  cost = jax.jit(grad).lower(params, abstract_batch(cfg, samples)).cost_analysis()
  return float((cost or {}).get("flops", 0.0))


def train_flops(cfg) -> float:
  return gan_train_flops(cfg, build_model, loss, cfg.model.sample_rate, hop(cfg))


def batch_shapes(cfg) -> dict[str, jax.ShapeDtypeStruct]:
  """One global batch of training crops (`jaxspeech plan` without the dataset)."""
  return abstract_batch(cfg, crop_samples(cfg.data.crop_seconds, cfg.model.sample_rate, hop(cfg)))


def units(batch) -> dict[str, float]:
  valid = np.asarray(batch["valid"])
  return {"examples": float(valid.sum()), "samples": float(np.asarray(batch["audio_lengths"])[valid].sum())}


FAMILY = Family(
    name="codec", build_model=build_model, loss=loss, evaluate=evaluate, make_data=make_data, batch_axes=batch_axes,
    train_flops=train_flops, units=units, param_groups=param_group, batch_shapes=batch_shapes)
