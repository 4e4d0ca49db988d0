"""FastConformer-CTC speech recognition (NVIDIA's Parakeet-CTC) on the embedded corpus, 16 kHz.

`tiny` (2.2M params) trains on a 2-core CPU over characters (4× subsampling: 25 output frames a second outrun
the corpus's ~18 characters a second, which 8× would not); 2,000 steps of 30 s of audio took 52 minutes and
reach CER 4.3% / WER 21% on the test split (benchmarks/RESULTS.md):

  jaxspeech train --config=configs/asr.py:tiny --workdir=workdirs/asr_tiny
  jaxspeech asr eval --asr workdirs/asr_tiny --split test

`tiny_streaming` is the same model with NeMo's cache-aware streaming (chunks of 320 ms, 1.92 s of left context,
causal convs; docs/asr.md): `jaxspeech asr transcribe --stream` runs it chunk by chunk. Its 2,000 steps took 54
minutes on 2 shared cores and reach CER 5.9% / WER 27.6% on the test split (benchmarks/RESULTS.md):

  jaxspeech train --config=configs/asr.py:tiny_streaming --workdir=workdirs/asr_streaming

`parakeet_ctc_0.6b` is nvidia/parakeet-ctc-0.6b's shape (24 layers, d_model 1024, 8× subsampling) over a
1,024-piece sentencepiece model, with NeMo's FastConformer recipe (AdamW lr 1e-3 after 15k warmup steps,
SpecAugment 2 × 27 bins and 10 × 5% of frames, bf16):

  jaxspeech text train --dataset DATA --output spm1024.model --vocab-size 1024
  jaxspeech train --config=configs/asr.py:parakeet_ctc_0.6b --workdir=workdirs/parakeet \
      --config.data.path=DATA --config.data.tokenizer=spm1024.model

Evaluation reports CTC loss, WER and CER (greedy decoding) on `data.eval_split`.
"""

import dataclasses

from jaxspeech.asr import text
from jaxspeech.asr.model import SIZES
from jaxspeech.train import config as base


def get_config(variant: str = "tiny"):
  if variant not in SIZES:
    raise ValueError(f"unknown variant {variant!r} of configs/asr.py; choose one of {', '.join(SIZES)}")
  cfg = base.defaults()
  cfg.family = "asr"
  cfg.model.update(**dataclasses.asdict(SIZES[variant]))
  cfg.augment = dict(freq_masks=2, freq_width=27, time_masks=10, time_width=0.05)
  cfg.data.update(tokenizer="", frame_budget=8 * 20_000, bucket_seconds=(5, 10, 20), max_text=512)
  cfg.train.update(best_metric="wer", best_mode="min")
  cfg.optim.update(lr=1e-3, schedule="cosine", warmup_steps=15_000, weight_decay=1e-3, b2=0.98, clip_norm=1.0)
  if variant.startswith("tiny"):
    cfg.model.update(subsampling_factor=4, vocab_size=text.Characters.vocab_size + 1)
    cfg.augment.freq_width = 15
    cfg.data.update(frame_budget=3_000, bucket_seconds=(5, 10), max_text=224)
    cfg.train.update(steps=2000, log_every=25, eval_every=500, checkpoint_every=500)
    cfg.optim.update(lr=2e-3, warmup_steps=200)
  else:
    cfg.model.dtype = "bfloat16"
    cfg.train.update(steps=300_000, log_every=100, eval_every=5_000, checkpoint_every=5_000)
  return cfg
