"""The vocoder (log-mel → wav) that the DiT family decodes through, trained with the codec's GAN losses.

  jaxspeech train --config=configs/vocoder.py:tiny --workdir=workdirs/vocoder_tiny
  jaxspeech eval  --config=configs/vocoder.py:tiny --workdir=workdirs/vocoder_tiny       (mel distance)
  jaxspeech dit synthesize --dit DIT_WORKDIR --vocoder workdirs/vocoder_tiny ...

Input: F5-TTS's log-mel (24 kHz, 100 bins, n_fft 1024, hop 256) of the corpus resampled to 24 kHz. `base` is
Vocos mel-24kHz's shape (width 512, 8 blocks, ISTFT n_fft 1024 hop 256) built from the codec's transformer
decoder (Vocos' own blocks are ConvNeXt); `tiny` is CPU-sized.
"""

import dataclasses

import ml_collections

from jaxspeech.gan import losses
from jaxspeech.train import config as base
from jaxspeech.vocoder.model import SIZES

VARIANTS = tuple(SIZES)


def get_config(variant: str = "tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/vocoder.py; choose one of {', '.join(VARIANTS)}")
  cfg = base.defaults()
  cfg.family = "vocoder"
  cfg.model = ml_collections.ConfigDict(dataclasses.asdict(SIZES[variant]))
  cfg.gan = losses.defaults()
  cfg.optim.update(**losses.OPTIM)
  if variant == "tiny":
    cfg.gan.update(period_channels=(8, 16, 32, 32, 32), resolution_channels=8)
    cfg.data.update(crop_seconds=0.4, eval_crop_seconds=2.0)
    cfg.train.update(steps=300, batch_size=8, log_every=10, eval_every=100, checkpoint_every=100)
    cfg.optim.update(lr=1e-3, warmup_steps=20, end_lr_factor=0.2)
  else:
    cfg.data.update(crop_seconds=1.0, eval_crop_seconds=3.0)
    cfg.train.update(steps=1_000_000, batch_size=16, log_every=100, eval_every=10_000, checkpoint_every=5000)
    cfg.optim.update(lr=5e-4, warmup_steps=1000, end_lr_factor=0.0)
  return cfg
