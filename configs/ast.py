"""AST on the embedded corpus: speaker classification, SSAST pretraining, fine-tuning, and PETL.

Speaker classification (Kaldi fbank → AST → speaker); `tiny` is what `make train` runs:

  jaxspeech train --config=configs/ast.py:tiny --workdir=workdirs/ast_tiny
  jaxspeech eval  --config=configs/ast.py:tiny --workdir=workdirs/ast_tiny

SSAST self-supervised pretraining on unlabelled audio (speaker labels are ignored; any TFDS speech dataset
with the same schema works via --config.data.path), patch-based (16×16 patches, cluster masking) or
frame-based (128×2 patches, random masking):

  jaxspeech train --config=configs/ast.py:ssast_patch_tiny --workdir=workdirs/ssast_patch_tiny
  jaxspeech train --config=configs/ast.py:ssast_frame_tiny --workdir=workdirs/ssast_frame_tiny

Fine-tuning a speaker classifier from the patch-based run (`train.init_from`: its newest checkpoint; the
kernel is reused at stride 10, the positional embeddings are resized, the head reads the mean of the patch
tokens):

  jaxspeech train --config=configs/ast.py:finetune --workdir=workdirs/ast_finetune \
      --config.train.init_from=workdirs/ssast_patch_tiny

From the frame-based run, keep its 128×2 patches and overlap in time only:

  jaxspeech train --config=configs/ast.py:finetune --workdir=workdirs/ast_finetune_frame \
      --config.train.init_from=workdirs/ssast_frame_tiny --config.model.patch=128 \
      --config.model.time_patch=2 --config.model.fstride=128 --config.model.tstride=1

Parameter-efficient fine-tuning (PETL-AST's methods, `jaxspeech/ast/adapters.py`): the AST of `train.init_from`
is frozen and only the method's params, the final norm and the head train. Each starts from the patch-based
SSAST run above (16×16 patches at stride 16, the head reads the cls and distillation tokens):

  jaxspeech train --config=configs/ast.py:adapter_pfeiffer --workdir=workdirs/ast_pfeiffer
  jaxspeech train --config=configs/ast.py:adapter_houlsby --workdir=workdirs/ast_houlsby
  jaxspeech train --config=configs/ast.py:conformer_adapter --workdir=workdirs/ast_conformer
  jaxspeech train --config=configs/ast.py:lora --workdir=workdirs/ast_lora
  jaxspeech train --config=configs/ast.py:prompt --workdir=workdirs/ast_prompt
  jaxspeech train --config=configs/ast.py:bitfit --workdir=workdirs/ast_bitfit

`--config.train.init_from` takes any AST workdir instead: a classifier trained here, or a converted HF or
original checkpoint (`jaxspeech convert ast --from hf ...`) with `model` overrides of its shape (docs/ast.md).
The method's settings are `--config.model.adapter.*` (e.g. `.mode=sequential`, `.reduction=8`, `.rank=4`).

Variants: `tiny`, `ssast_patch_tiny`, `ssast_frame_tiny`, `finetune` and the PETL ones (2-core CPU); `base`
(the published AST-Base shape: 768 wide, 12 layers, 16×16 patches at stride 10 over 1024 frames),
`ssast_patch_base` and `ssast_frame_base` (the SSAST-Base recipe: 400 of 512 patches masked, batch 24, lr 1e-4).
"""

import dataclasses

import ml_collections

from jaxspeech.ast.model import ASTConfig
from jaxspeech.train import config as base

# PETL variant -> its `model.adapter` (see jaxspeech.ast.adapters.PETLConfig for every field)
PETL = {
    "adapter_pfeiffer": dict(kind="pfeiffer"),
    "adapter_houlsby": dict(kind="houlsby"),
    "conformer_adapter": dict(kind="pfeiffer", block="conformer"),
    "lora": dict(kind="lora"),
    "prompt": dict(kind="prompt"),
    "bitfit": dict(kind="bitfit"),
}
VARIANTS = ("tiny", "base", "ssast_patch_tiny", "ssast_frame_tiny", "ssast_patch_base", "ssast_frame_base",
            "finetune", *PETL)
# CPU variants attend ≤ 1 MiB of logits at a time (one core's L2 here): 4–6 % faster AST steps, benchmarks/RESULTS.md
TINY = dict(hidden=128, layers=4, heads=4, mlp=256, max_frames=256, attention_block_kib=1024)
BASE = dict(hidden=768, layers=12, heads=12, mlp=3072, max_frames=1024)


def get_config(variant: str = "tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/ast.py; choose one of {', '.join(VARIANTS)}")
  cfg = base.defaults()
  cfg.family = "ast"
  # task: "classify" or "ssast" (pretraining); 16 classes: the speakers of the default corpus (held-out ones never
  # train). jaxspeech.ast.model.ASTConfig says what each model field is.
  cfg.model.update(task="classify", **dataclasses.asdict(ASTConfig(num_classes=16)))
  cfg.train.best_metric = "accuracy"
  if variant.startswith("ssast"):
    _ssast(cfg, frame=variant.startswith("ssast_frame"))
  if variant in ("tiny", "ssast_patch_tiny", "ssast_frame_tiny", "finetune", *PETL):
    cfg.model.update(**TINY)
    cfg.train.update(steps=300, batch_size=32, log_every=10, eval_every=100, checkpoint_every=100)
    cfg.optim.update(lr=1e-3, warmup_steps=30)
  else:
    cfg.model.update(**BASE)
    cfg.model.dtype = "bfloat16"
    cfg.train.update(steps=20_000, batch_size=256, eval_every=1000, checkpoint_every=1000)
    cfg.optim.update(lr=1e-4, warmup_steps=1000)
  if variant == "tiny" or variant in PETL:
    cfg.model.update(fstride=16, tstride=16)
  elif variant in ("base", "finetune"):
    cfg.model.update(fstride=10, tstride=10)
  if variant == "finetune":
    cfg.model.pool = "mean"
    cfg.train.update(init_from="workdirs/ssast_patch_tiny",
                     batch_size=8)    # 12×25 overlapping patches: 2.3× tiny's tokens per clip
  elif variant in PETL:
    _petl(cfg, PETL[variant])
  elif variant.endswith("_tiny"):
    cfg.ssast.mask_patches = 100      # of 128 patches, SSAST's 400-of-512 ratio
    cfg.train.update(batch_size=16)
  elif variant.startswith("ssast"):  # SSAST's recipe: Adam β1 0.95, weight decay 5e-7, lr 1e-4, 1000 warmup
    cfg.train.update(batch_size=24)
    cfg.optim.update(b1=0.95, weight_decay=5e-7)
  return cfg


def _ssast(cfg, frame: bool):
  """SSAST pretraining: non-overlapping patches, no classes, InfoNCE + 10 × MSE on the masked patches."""
  cfg.model.update(task="ssast", num_classes=0)
  if frame:  # 128×2 frame patches: frequency-full, 2 frames wide
    cfg.model.update(patch=128, time_patch=2, fstride=128, tstride=2)
  else:
    cfg.model.update(fstride=16, tstride=16)
  cfg.ssast = ml_collections.ConfigDict(dict(
      mask_patches=400, masking="random" if frame else "cluster", cluster_sizes=(3, 4, 5),
      nce_weight=1.0, mse_weight=10.0))
  cfg.train.best_metric = "accuracy"  # masked-patch accuracy, as SSAST picks its best model


def _petl(cfg, method: dict):
  """A frozen AST (from `train.init_from`) with one PETL method; every PETLConfig field is here to override."""
  cfg.train.init_from = "workdirs/ssast_patch_tiny"
  cfg.model.adapter = ml_collections.ConfigDict(dict(
      kind="", block="bottleneck", mode="parallel", reduction=16, kernel_size=31, rank=8, alpha=8.0,
      targets=("query", "key"), prompts=8))
  cfg.model.adapter.update(**method)
  cfg.optim.groups = ml_collections.ConfigDict({"frozen": {}})
  cfg.train.update(batch_size=16)
