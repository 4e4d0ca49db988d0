"""The vocoder as a family: log-mel → `Vocoder` → wav, trained with the codec's GAN objective (`losses.gan_loss`).

Crops of `data.crop_seconds` at `model.sample_rate` (24 kHz); the log-mel is computed on the device.
"""

import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxspeech.codec import family as codec_family, losses
from jaxspeech.codec.vocoder import Vocoder
from jaxspeech.data import pipeline
from jaxspeech.train.family import Family


class VocoderGAN(Vocoder):
  def __init__(self, cfg: ml_collections.ConfigDict, gan: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    losses.add_discriminators(self, gan, rngs)


def build_model(cfg, rngs):
  return VocoderGAN(cfg.model, cfg.gan, rngs=rngs)


def _reconstruct(model, wav_BxS):
  return model(model.mel(wav_BxS))[:, :wav_BxS.shape[1]]


def loss(model, batch, key, cfg):
  del key
  wav_BxS = batch["audio"]
  return losses.gan_loss(model, wav_BxS, _reconstruct(model, wav_BxS), cfg.gan,
                         cfg.model.sample_rate, codec_family.adversarial_on(batch, cfg))


def evaluate(model, batch, cfg):
  """Mel distance of each clip's valid samples."""
  wav_BxS, valid_B = batch["audio"], batch["valid"].astype(jnp.float32)
  mask_BxS = jnp.arange(wav_BxS.shape[1]) < batch["audio_lengths"][:, None]
  distance_B = losses.mel_distance(wav_BxS, jnp.where(mask_BxS, _reconstruct(model, wav_BxS), 0),
                                   cfg.model.sample_rate)
  return {"mel_distance": ((distance_B * valid_B).sum(), valid_B.sum())}


def make_data(cfg, split, *, train, shard_index, shard_count):
  pipeline.require_speech(cfg.data.path, "the vocoder family")
  return codec_family.make_gan_data(cfg, split, train=train, shard_index=shard_index, shard_count=shard_count,
                                    sample_rate=cfg.model.sample_rate, frame=cfg.model.hop)


def train_flops(cfg) -> float:
  return codec_family.gan_train_flops(cfg, build_model, loss, cfg.model.sample_rate, cfg.model.hop)


def batch_shapes(cfg):
  return codec_family.abstract_batch(cfg, codec_family.crop_samples(cfg.data.crop_seconds, cfg.model.sample_rate,
                                                                    cfg.model.hop))


FAMILY = Family(
    name="vocoder", build_model=build_model, loss=loss, evaluate=evaluate, make_data=make_data,
    batch_axes=codec_family.batch_axes, train_flops=train_flops, units=codec_family.units,
    param_groups=losses.param_group, batch_shapes=batch_shapes)
