"""X-codec2 codec GAN training on the embedded corpus (resampled to 16 kHz, 50 codes/s, 65,536 FSQ codes).

  jaxspeech train --config=configs/codec.py:tiny --workdir=workdirs/codec_tiny
  jaxspeech eval  --config=configs/codec.py:tiny --workdir=workdirs/codec_tiny      (mel distance, STOI, PESQ)
  jaxspeech codec eval --workdir=workdirs/codec_tiny          (the same, plus codebook usage and perplexity)

`tiny` is a CPU-sized acoustic-only codec with small discriminators; `tiny_semantic` adds the semantic branch
with a small random w2v-BERT teacher (a CPU check of that path). `base` is the released X-codec2 shape
(`jaxspeech.codec.sizes.base`) with Vocos' full discriminators and X-codec2's recipe: AdamW β (0.8, 0.9),
lr 1e-4 → 2e-5 after 3k warmup steps, clipping 1.0; `base_w2vbert` is the same with w2v-BERT 2.0 as the frozen
semantic teacher (import its weights with `jaxspeech convert codec ... --w2vbert DIR`, docs/codec.md). Without a
teacher, train `base` acoustic-only: `--config.model.semantic.enabled=False`. A generator-only warm-up:
`--config.gan.warmup_steps=N`.
"""

import dataclasses

import ml_collections

from jaxspeech.codec import sizes
from jaxspeech.gan import losses
from jaxspeech.train import config as base

VARIANTS = ("tiny", "tiny_semantic", "base", "base_w2vbert")


def get_config(variant: str = "tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/codec.py; choose one of {', '.join(VARIANTS)}")
  cfg = base.defaults()
  cfg.family = "codec"
  cfg.model = ml_collections.ConfigDict(dataclasses.asdict(sizes.SIZES[variant]()))
  cfg.gan = losses.defaults()
  cfg.data.update(crop_seconds=1.0, eval_crop_seconds=3.0)
  cfg.optim.update(**losses.OPTIM)
  cfg.optim.groups.frozen = {}   # a w2v-BERT teacher's params (`semantic.w2vbert`), if the model runs one
  if variant.startswith("tiny"):
    cfg.gan.update(period_channels=(8, 16, 32, 32, 32), resolution_channels=8)
    cfg.data.update(crop_seconds=0.4, eval_crop_seconds=2.0)
    cfg.train.update(steps=300, batch_size=8, log_every=10, eval_every=100, checkpoint_every=100)
    # lr 1e-3 collapsed the codebook to one code within 300 steps (encoder output std 0.005 → 8e5, FSQ saturated);
    # at 2e-4 the encoder stayed at std ~0.5 with codes in use (benchmarks/RESULTS.md, codec quality).
    cfg.optim.update(lr=2e-4, warmup_steps=20, end_lr_factor=0.2)
  else:
    cfg.train.update(steps=1_400_000, batch_size=64, log_every=100, eval_every=10_000, checkpoint_every=5000)
    cfg.optim.update(lr=1e-4, warmup_steps=3000, end_lr_factor=0.2)
  return cfg
