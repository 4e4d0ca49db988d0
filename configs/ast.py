"""AST speaker classification on the embedded corpus (Kaldi fbank → AST → speaker).

  jaxspeech train --config=configs/ast.py:tiny --workdir=workdirs/ast_tiny
  jaxspeech eval  --config=configs/ast.py:tiny --workdir=workdirs/ast_tiny

Variants: `tiny` (2-core CPU, what `make train` runs) and `base` (the published AST-Base shape:
768 wide, 12 layers, 16×16 patches at stride 10 over 1024 frames).
"""

from jaxspeech.train import config as base


def get_config(variant: str = "tiny"):
  cfg = base.defaults()
  cfg.family = "ast"
  cfg.model.num_classes = 16          # speakers of the default corpus (held-out ones never train)
  cfg.model.num_mel_bins = 128
  cfg.model.patch = 16
  cfg.model.layer_norm_eps = 1e-12
  cfg.model.dtype = "float32"
  cfg.train.best_metric = "accuracy"
  if variant == "tiny":
    cfg.model.update(hidden=128, layers=4, heads=4, mlp=256, max_frames=256, fstride=16, tstride=16)
    cfg.train.update(steps=300, batch_size=32, log_every=10, eval_every=100, checkpoint_every=100)
    cfg.optim.update(lr=1e-3, warmup_steps=30)
  elif variant == "base":
    cfg.model.update(hidden=768, layers=12, heads=12, mlp=3072, max_frames=1024, fstride=10, tstride=10)
    cfg.model.dtype = "bfloat16"
    cfg.train.update(steps=20_000, batch_size=256, eval_every=1000, checkpoint_every=1000)
    cfg.optim.update(lr=1e-4, warmup_steps=1000)
  else:
    raise ValueError(f"unknown variant {variant!r} of configs/ast.py; choose tiny or base")
  return cfg
