"""F5-TTS flow-matching DiT (and the E2-TTS UNetT) on the embedded corpus, resampled to 24 kHz.

`tiny` runs on a 2-core CPU (a few steps a second once compiled; the loss falls within a few dozen steps):

  jaxspeech train --config=configs/dit.py:tiny --workdir=workdirs/dit_tiny

`base` is F5TTS_v1_Base (dim 1024, 22 blocks, 16 heads, text 512, 4 ConvNeXt blocks) with F5's recipe: AdamW
lr 7.5e-5, 20k warmup then linear decay, clip 1.0, 38,400 frames per device × 8, EMA, bf16 compute. Fine-tune
a released checkpoint by importing it first (see docs/dit.md):

  jaxspeech convert dit --from f5 --src model_1250000.safetensors --dst workdirs/f5_base --vocab vocab.txt
  jaxspeech train --config=configs/dit.py:base --workdir=workdirs/f5_finetune \
      --config.train.init_from=workdirs/f5_base --config.model.vocab_file=vocab.txt

`e2_tiny` / `e2_base` are the E2-TTS UNetT. The character vocabulary is built from the dataset's train
transcripts unless `model.vocab_file` names an F5 vocab.txt; either way the run keeps it in WORKDIR/vocab_char.txt.
`model.remat` (none, full, save_dots) trades recomputation for activation memory.

Zero-shot evaluation on the corpus's unseen speakers (see docs/dit.md):

  jaxspeech dit eval --dit workdirs/dit_tiny --vocoder workdirs/vocoder_tiny --split test_unseen

`consistency_tiny` / `consistency_base` distil a trained DiT (the teacher, `train.init_from`) into a student of
its shape that samples in 1–4 steps without CFG (`jaxspeech.dit.consistency`, docs/dit.md):

  jaxspeech train --config=configs/dit.py:consistency_tiny --workdir=workdirs/dit_cd_tiny \
      --config.train.init_from=workdirs/dit_tiny
  jaxspeech dit eval --dit workdirs/dit_cd_tiny --method consistency --nfe 2 --cfg-strength 0
"""

import dataclasses

from jaxspeech.dit.sizes import SIZES
from jaxspeech.train import config as base


DISTILLED = ("consistency_tiny", "consistency_base")
VARIANTS = (*SIZES, *DISTILLED)


def get_config(variant: str = "tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/dit.py; choose one of {', '.join(VARIANTS)}")
  size = variant.removeprefix("consistency_")
  cfg = base.defaults()
  cfg.family = "dit"
  cfg.model.update(**dataclasses.asdict(SIZES[size]), vocab_file="")
  cfg.objective = dict(frac_lengths=(0.7, 1.0), audio_drop_prob=0.3, cond_drop_prob=0.2)
  cfg.data.update(frame_budget=38_400 * 8, bucket_seconds=(4, 8, 16, 30), max_text=1024)
  cfg.train.update(ema_decay=0.9999, best_metric="loss", best_mode="min")
  cfg.optim.update(lr=7.5e-5, schedule="linear", warmup_steps=20_000, clip_norm=1.0, weight_decay=0.01)
  if size.endswith("tiny"):
    cfg.data.update(frame_budget=4096, bucket_seconds=(4, 10), max_text=160)
    cfg.model.attention_block_kib = 1024  # ≤ 1 MiB of logits per attention block: cache-sized on CPU
    cfg.train.update(steps=2000, log_every=10, eval_every=500, checkpoint_every=500, ema_decay=0.999)
    cfg.optim.update(lr=1e-3, warmup_steps=100)
  else:
    cfg.model.dtype = "bfloat16"
    cfg.train.update(steps=1_200_000, log_every=100, eval_every=10_000, checkpoint_every=10_000)
  if variant in DISTILLED:
    cfg.distill = dict(steps=32, sway=-1.0, cfg_strength=2.0, teacher_solver="euler")
    cfg.optim.groups.frozen = {}   # the teacher
    if size == "tiny":
      # 300 steps: a teacher grid of 8 steps at lr 5e-4 got the one-step student 0.85 from the teacher's converged
      # mel, against 1.00 for 32 steps at 2e-4 and the teacher's own one-step 1.10 (benchmarks/RESULTS.md)
      cfg.distill.steps = 8
      cfg.train.update(steps=300, eval_every=0, checkpoint_every=100, ema_decay=0.99)
      cfg.optim.update(lr=5e-4, warmup_steps=20)
    else:
      cfg.train.update(steps=100_000, ema_decay=0.9999)
      cfg.optim.update(lr=1e-5, warmup_steps=2000)
  return cfg
