"""X-codec2 as a family: the codec and its two discriminators trained together by one GAN loss (`jaxspeech.gan`).

The training model is the `Codec` with the discriminators beside its own modules, so a workdir's params are the
codec's at the top level (as `jaxspeech convert codec --from xcodec2` writes them) plus `discriminator.*` and
`spec_discriminator.*`. Data: random crops of `data.crop_seconds` (whole hops) resampled to `model.sample_rate`;
eval crops are `data.eval_crop_seconds` long. STOI and PESQ run on the host after the eval step (`evaluate_on_host`).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxspeech.audio import quality
from jaxspeech.codec import model as model_lib
from jaxspeech.codec.model import Codec, CodecConfig
from jaxspeech.data import pipeline
from jaxspeech.gan import crops, losses
from jaxspeech.train.family import Family


class CodecGAN(Codec):
  def __init__(self, cfg: CodecConfig, gan: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    losses.add_discriminators(self, gan, rngs)


def model_config(cfg) -> CodecConfig:
  return CodecConfig(**cfg.model.to_dict())


def build_model(cfg, rngs):
  """The codec with its discriminators; the codec alone for a config without `gan` (`jaxspeech convert`'s, whose
  workdirs hold the generator's params: training starts from them with `train.init_from`)."""
  if "gan" not in cfg:
    return Codec(model_config(cfg), rngs=rngs)
  return CodecGAN(model_config(cfg), cfg.gan, rngs=rngs)


def param_group(path: tuple[str, ...], leaf) -> str:
  """"frozen" for the w2v-BERT teacher's params (no update, no optimizer state), else the GAN player's group."""
  return "frozen" if model_lib.frozen(path) else losses.param_group(path, leaf)


def hop(cfg) -> int:
  return int(np.prod(cfg.model.encoder.strides))


def loss(model, batch, key, step, cfg):
  del key
  wav_BxS = batch["audio"]
  out = model(wav_BxS, batch.get("semantic_features"))
  total, metrics = losses.gan_loss(model, wav_BxS, out["wav"][:, :wav_BxS.shape[1]], cfg.gan,
                                   cfg.model.sample_rate, step)
  if model.semantic:
    semantic = jnp.mean((out["semantic_pred"] - out["semantic_target"]) ** 2)
    total += cfg.gan.semantic_weight * semantic
    metrics["semantic"] = semantic
  return total, metrics


def evaluate(model, batch, cfg):
  """Mel distance of each clip's valid samples; the clips and their reconstructions for STOI and wideband PESQ
  on the host (`evaluate_on_host`)."""
  wav_BxS, lengths_B, valid_B = batch["audio"], batch["audio_lengths"], batch["valid"]
  mask_BxS = jnp.arange(wav_BxS.shape[1]) < lengths_B[:, None]
  wav_hat_BxS = jnp.where(mask_BxS, model(wav_BxS, batch.get("semantic_features"))["wav"][:, :wav_BxS.shape[1]], 0)
  distance_B = losses.mel_distance(wav_BxS, wav_hat_BxS, cfg.model.sample_rate)
  return {"mel_distance": (jnp.sum(jnp.where(valid_B, distance_B, 0.0)), jnp.sum(valid_B)),
          "wav": wav_BxS, "wav_hat": wav_hat_BxS, "lengths": lengths_B, "valid": valid_B}


def evaluate_on_host(outputs, cfg) -> dict[str, tuple[float, float]]:
  """STOI (and, at 16 kHz, wideband PESQ) summed over the valid clips."""
  stoi_B, pesq_B = quality.scores(outputs["wav"], outputs["wav_hat"], outputs["lengths"], outputs["valid"],
                                  cfg.model.sample_rate)
  count = float(np.sum(outputs["valid"]))
  scores = {"stoi": (float(stoi_B.sum()), count)}
  if cfg.model.sample_rate == quality.PESQ_RATE:
    scores["pesq"] = (float(pesq_B.sum()), count)
  return scores


def make_data(cfg, split, *, train, shard_index, shard_count):
  pipeline.require_speech(cfg.data.path, "the codec family")
  if cfg.model.semantic.enabled and not cfg.model.semantic.w2vbert:
    raise ValueError("training the semantic branch on the corpus needs its w2v-BERT teacher (model.semantic.w2vbert: "
                     "configs/codec.py:tiny_semantic or base_w2vbert); or set --config.model.semantic.enabled=False")
  return crops.make_data(cfg, split, train=train, shard_index=shard_index, shard_count=shard_count,
                         sample_rate=cfg.model.sample_rate, frame=hop(cfg))


def train_flops(cfg) -> float:
  return losses.train_flops(cfg, build_model, loss, batch_shapes(cfg))


def batch_shapes(cfg) -> dict[str, jax.ShapeDtypeStruct]:
  """One global batch of training crops (`jaxspeech plan` without the dataset)."""
  return crops.abstract_batch(cfg, crops.crop_samples(cfg.data.crop_seconds, cfg.model.sample_rate, hop(cfg)))


def tokens_per_step(cfg) -> float:
  return crops.frames_per_step(cfg, cfg.model.sample_rate, hop(cfg))


FAMILY = Family(
    name="codec", build_model=build_model, loss=loss, evaluate=evaluate, make_data=make_data,
    batch_axes=crops.batch_axes, train_flops=train_flops, units=crops.units,
    tokens_per_step=tokens_per_step, param_groups=param_group, batch_shapes=batch_shapes,
    evaluate_on_host=evaluate_on_host)
