"""Llasa: a Llama LM over text tokens and speech-codec codes, pretrained on packed 2048-token rows.

Data is a code dataset (fields `codes`, `text`, `speaker`), as the codec family's tokenize job writes it, and
a sentencepiece model of its transcripts (`jaxspeech text train`). `tiny` runs on a 2-core CPU:

  jaxspeech text train --dataset data/synth_speech/1.0.0 --output data/llasa_spm256.model --vocab-size 256
  jaxspeech train --config=configs/llasa.py:tiny --workdir=workdirs/llasa_tiny \
      --config.data.path=data/llasa_codes/1.0.0 --config.llasa.tokenizer=data/llasa_spm256.model
  jaxspeech eval  --config=configs/llasa.py:tiny --workdir=workdirs/llasa_tiny

Larger variants follow Llasa's recipe (bf16, AdamW lr 5e-5 with 3% warmup and cosine decay, β2 0.95,
weight decay 0.01, clip 1.0, 2048-token rows) with layers scanned and FSDP over every device:

  jaxspeech train --config=configs/llasa.py:1b --workdir=gs://BUCKET/llasa_1b \
      --config.data.path=/gcs/BUCKET/codes/1.0.0 --config.llasa.tokenizer=gs://BUCKET/spm.model

`150m` is a 146M-param model with Llasa's full vocabulary; `1b`, `3b` and `8b` are the Llama 3.2-1B / 3.2-3B /
3.1-8B shapes of Llasa-1B / 3B / 8B (193,800 ids; 1B tied, 3B and 8B untied). To continue from a released
checkpoint, import it (`jaxspeech convert llasa --from hf --src DIR --dst IMPORTED --scan-layers`) and start a run
from it with `--config.train.init_from=IMPORTED`: the 128,256 Llama text ids are then the text vocabulary
(`llasa.text_vocab_size`).
"""

import dataclasses

import ml_collections

from jaxspeech.llasa.model import LlamaConfig
from jaxspeech.llasa.sizes import SIZES
from jaxspeech.llasa.vocab import LLAMA3_TEXT_VOCAB, NUM_SPEECH_TOKENS, SPECIAL_TOKENS
from jaxspeech.train import config as base

VARIANTS = tuple(SIZES)
TINY_TEXT_VOCAB = 256


def get_config(variant: str = "tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/llasa.py; choose one of {', '.join(VARIANTS)}")
  cfg = base.defaults()
  cfg.family = "llasa"
  text_vocab = TINY_TEXT_VOCAB if variant == "tiny" else LLAMA3_TEXT_VOCAB
  cfg.llasa = ml_collections.ConfigDict(dict(
      text_vocab_size=text_vocab,       # ids below this are the tokenizer's; Llasa's specials follow
      num_speech_tokens=NUM_SPEECH_TOKENS,
      tokenizer="data/llasa_spm256.model",
      train_text=False,                 # True: the transcript's tokens are trained too
      loss_chunk=0,                     # >0: head + cross-entropy this many positions at a time (saves memory)
      seq_len=2048))
  size = {"vocab_size": text_vocab + len(SPECIAL_TOKENS) + NUM_SPEECH_TOKENS, **SIZES[variant]}
  cfg.model = ml_collections.ConfigDict(dataclasses.asdict(LlamaConfig(**size)))
  cfg.data.path = "data/llasa_codes/1.0.0"
  cfg.train.best_metric = "loss"
  cfg.train.best_mode = "min"
  if variant == "tiny":
    cfg.llasa.seq_len = 512
    cfg.train.update(steps=300, batch_size=4, log_every=10, eval_every=100, checkpoint_every=100)
    cfg.optim.update(lr=3e-3, warmup_steps=20, b2=0.95)
    return cfg
  cfg.model.update(dtype="bfloat16", scan_layers=True, remat="save_dots" if variant in ("150m", "1b") else "full")
  cfg.mesh.update(data=1, fsdp=-1)
  steps = 100_000
  cfg.train.update(steps=steps, batch_size=256, log_every=50, eval_every=2000, checkpoint_every=2000)
  cfg.optim.update(lr=5e-5, warmup_steps=int(0.03 * steps), b2=0.95, weight_decay=0.01, clip_norm=1.0)
  return cfg
