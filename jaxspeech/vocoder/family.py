"""The vocoder as a family: log-mel → `Vocoder` → wav, trained with the codec's GAN objective (`jaxspeech.gan`).

Crops of `data.crop_seconds` at `model.sample_rate` (24 kHz); the log-mel is computed on the device.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxspeech.data import pipeline
from jaxspeech.gan import crops, losses
from jaxspeech.vocoder.model import Vocoder, VocoderConfig
from jaxspeech.workdir import Workdir
from jaxspeech.train.family import Family


class VocoderGAN(Vocoder):
  def __init__(self, cfg: VocoderConfig, gan: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    losses.add_discriminators(self, gan, rngs)


def model_config(cfg) -> VocoderConfig:
  return VocoderConfig(**cfg.model.to_dict())


def build_model(cfg, rngs):
  """The vocoder with its discriminators; the vocoder alone for a config without `gan` (`Workdir.load_model`)."""
  if "gan" not in cfg:
    return Vocoder(model_config(cfg), rngs=rngs)
  return VocoderGAN(model_config(cfg), cfg.gan, rngs=rngs)


def _reconstruct(model, wav_BxS):
  return model(model.mel(wav_BxS))[:, :wav_BxS.shape[1]]


def loss(model, batch, key, step, cfg):
  del key
  wav_BxS = batch["audio"]
  return losses.gan_loss(model, wav_BxS, _reconstruct(model, wav_BxS), cfg.gan, cfg.model.sample_rate, step)


def evaluate(model, batch, cfg):
  """Mel distance of each clip's valid samples."""
  wav_BxS, valid_B = batch["audio"], batch["valid"].astype(jnp.float32)
  mask_BxS = jnp.arange(wav_BxS.shape[1]) < batch["audio_lengths"][:, None]
  distance_B = losses.mel_distance(wav_BxS, jnp.where(mask_BxS, _reconstruct(model, wav_BxS), 0),
                                   cfg.model.sample_rate)
  return {"mel_distance": ((distance_B * valid_B).sum(), valid_B.sum())}


def make_data(cfg, split, *, train, shard_index, shard_count):
  pipeline.require_speech(cfg.data.path, "the vocoder family")
  return crops.make_data(cfg, split, train=train, shard_index=shard_index, shard_count=shard_count,
                         sample_rate=cfg.model.sample_rate, frame=cfg.model.hop)


def train_flops(cfg) -> float:
  return losses.train_flops(cfg, build_model, loss, batch_shapes(cfg))


def batch_shapes(cfg):
  return crops.abstract_batch(cfg, crops.crop_samples(cfg.data.crop_seconds, cfg.model.sample_rate, cfg.model.hop))


def tokens_per_step(cfg) -> float:
  return crops.frames_per_step(cfg, cfg.model.sample_rate, cfg.model.hop)


FAMILY = Family(
    name="vocoder", build_model=build_model, loss=loss, evaluate=evaluate, make_data=make_data,
    batch_axes=crops.batch_axes, train_flops=train_flops, units=crops.units, tokens_per_step=tokens_per_step,
    param_groups=losses.param_group, batch_shapes=batch_shapes)


@functools.lru_cache(maxsize=4)
def load(workdir: str):
  """`mel_BxTxM -> wav_BxS'`, jitted, with a vocoder workdir's newest params; cached per workdir."""
  graphdef, state = nnx.split(Workdir(workdir).load_model(FAMILY)[0])
  call = jax.jit(lambda state, mel_BxTxM: nnx.merge(graphdef, state)(mel_BxTxM))
  return functools.partial(call, state)


def vocode(workdir: str, mel_BxTxM) -> jax.Array:
  """Waveforms (B, T · hop) at the vocoder's rate from F5-style log-mels (B, T, n_mels)."""
  return load(workdir)(mel_BxTxM)
