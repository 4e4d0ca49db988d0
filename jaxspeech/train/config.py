"""Defaults every family config starts from (`configs/<family>.py` calls `defaults()`)."""

import ml_collections

# MaxText-style logical axis rules: logical name → mesh axes (None = replicated).
AXIS_RULES = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "sequence"),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("classes", None),
    ("norm", None),
    ("layers", None),
)


def defaults() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.family = ""
  cfg.seed = 0
  cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1))
  cfg.axis_rules = [list(r) for r in AXIS_RULES]
  cfg.model = ml_collections.ConfigDict()
  cfg.data = ml_collections.ConfigDict(dict(
      path="data/synth_speech/1.0.0", train_split="train", eval_split="validation", worker_count=0))
  cfg.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-3, schedule="cosine", warmup_steps=100, end_lr_factor=0.0, b1=0.9, b2=0.999,
      eps=1e-8, weight_decay=0.01, clip_norm=1.0, accum_steps=1, groups=ml_collections.ConfigDict()))
  cfg.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=32, log_every=10, eval_every=0, checkpoint_every=500, keep=3,
      best_metric="", best_mode="max", ema_decay=0.0, async_checkpoint=True,
      # a workdir (trained or converted) whose newest params start this run at step 0; params whose dotted
      # path matches the regex init_skip keep their fresh init (e.g. "^head\\." for a new classifier)
      init_from="", init_skip="",
      # "first,last": a jax.profiler trace of those steps into WORKDIR/profile
      profile_steps="",
      # XLA's persistent compilation cache: reruns and restarts skip compiling ("" turns it off)
      compilation_cache="~/.cache/jaxspeech/xla"))
  return cfg
