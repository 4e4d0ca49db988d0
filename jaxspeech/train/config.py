"""Defaults every family config starts from (`configs/<family>.py` calls `defaults()`), and the one way a
command resolves `--config=FILE.py[:VARIANT] --config.a.b=VALUE ...` (train, eval, plan and sweeps)."""

from collections.abc import Mapping
import os
import re

import ml_collections
from absl import flags
from ml_collections import config_flags

OVERRIDES_HELP = ("override any field with --config.<path>=VALUE, e.g. --config.train.steps=100 "
                  "--config.model.hidden=256 (the value is parsed as the field's type)")

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


def build_sections(config, **kinds) -> None:
  """For a frozen model-config dataclass's `__post_init__`: each field named in `kinds` that holds a mapping
  (config.json's, a ConfigDict's `to_dict()`) becomes that config class built from it, so `Config(**dict)` nests."""
  for name, kind in kinds.items():
    value = getattr(config, name)
    if isinstance(value, Mapping):
      object.__setattr__(config, name, kind(**value))


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


def add_argument(parser) -> None:
  """`--config` on an argparse parser; the command passes its leftover `--config.*` args to `load`."""
  parser.add_argument("--config", required=True, metavar="FILE.py[:VARIANT]",
                      help="a config file and variant, e.g. configs/ast.py:tiny; " + OVERRIDES_HELP)


def load(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
  """The config `spec` names with each `--config.a.b=value` of `overrides` applied, parsed as ml_collections'
  config flags parse them. ValueError, one line, for a missing file or variant, an unknown field, a bad value
  or an argument that is not an override."""
  stray = [a for a in overrides if not a.startswith("--config.")]
  if stray:
    raise ValueError(f"unrecognized arguments: {' '.join(stray)}")
  if not os.path.isfile(spec.partition(":")[0]):
    raise ValueError(f"no config file {spec.partition(':')[0]!r}")
  argv = ["jaxspeech", f"--config={spec}", *overrides]
  values = flags.FlagValues()  # private: nothing else parses these, and the process's absl FLAGS stay free
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv, lock_config=True)
  try:
    values(argv)
    cfg = holder.value
    cfg.get("family")  # a config file that failed to load raises only when used
  except Exception as e:  # pylint: disable=broad-except  (absl's and the config file's errors, as one line)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    message = lines[-1] if "Traceback" in str(e) else " ".join(lines)
    missing = re.match(r"""["']*\\?'(\w+)\\?'(?:\\n|["']*$)""", message)  # ml_collections names only the key
    if missing:
      named = [a.split("=")[0] for a in overrides if f".{missing.group(1)}." in a.split("=")[0] + "."]
      hint = re.search(r"Did you mean \"(\w+)\"", message)
      message = (f"no config field {named[0] if named else missing.group(1)!r} in the config file"
                 + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
    raise ValueError(message) from None
  return cfg
