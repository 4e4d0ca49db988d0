"""What a run costs: its resolved config, parameter count, tokens per step and FLOPs per step.

The trainer's config is resolved here exactly as `jaxspeech train` would (the config file's
`get_config(variant)`, then each `--config.a.b=value` override), so the counts match the run.
"""

from collections.abc import Callable, Mapping
import importlib.util
import json
import math
import os
from typing import Any

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:variant]` → the ConfigDict `jaxspeech train --config=spec` starts from."""
  path, _, variant = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config file {path!r} (from {spec!r})")
  module_spec = importlib.util.spec_from_file_location(f"_jaxspeech_sweep_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets each dotted field (`"model.hidden": 64`), refusing fields the config does not have."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())  # a copy; configs from files may be locked
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
      if part not in node:
        raise KeyError(f"no config field {key!r} for the sweep override")
      node = node[part]
    if leaf not in node:
      raise KeyError(f"no config field {key!r} for the sweep override")
    node[leaf] = value
  return cfg


def flag(key: str, value: Any) -> str:
  """The `jaxspeech train` flag that sets `key` to `value`."""
  if isinstance(value, bool):
    text = "true" if value else "false"
  elif isinstance(value, float):
    text = repr(value)
  elif isinstance(value, (int, str)):
    text = str(value)
  else:
    raise ValueError(f"sweep override {key}={value!r}: only bool, int, float and str values are supported")
  return f"--config.{key}={text}"


def _ast_tokens_per_example(cfg) -> int:
  from jaxspeech.ast.family import model_config  # pylint: disable=import-outside-toplevel
  f, t = model_config(cfg).grid()
  return f * t


# Tokens one example contributes to D (the "data" axis of a scaling law), by family. The engine's
# Family has no such field yet; a family that joins the registry adds its entry here.
TOKENS_PER_EXAMPLE: dict[str, Callable[[ml_collections.ConfigDict], int]] = {
    "ast": _ast_tokens_per_example,   # spectrogram patches
}


def tokens_per_step(cfg: ml_collections.ConfigDict) -> int:
  if cfg.family not in TOKENS_PER_EXAMPLE:
    raise KeyError(f"family {cfg.family!r} has no token count for sweeps; add it to "
                   f"jaxspeech.sweep.counts.TOKENS_PER_EXAMPLE (known: {sorted(TOKENS_PER_EXAMPLE)})")
  return TOKENS_PER_EXAMPLE[cfg.family](cfg) * cfg.train.batch_size


_PARAMS: dict[str, int] = {}


def param_count(cfg: ml_collections.ConfigDict) -> int:
  """Trainable parameters (every nnx.Param), from the abstract model: nothing is allocated."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxspeech.train import registry  # pylint: disable=import-outside-toplevel
  from jaxspeech.train import state  # pylint: disable=import-outside-toplevel
  key = json.dumps({"family": cfg.family, "model": cfg.model.to_dict()}, sort_keys=True)
  if key not in _PARAMS:
    _, params, _ = state.abstract_model(registry.get(cfg.family), cfg)
    _PARAMS[key] = int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
  return _PARAMS[key]


def flops_per_step(cfg: ml_collections.ConfigDict) -> float:
  """The family's analytic FLOPs of one training step (forward + backward) on the global batch."""
  from jaxspeech.train import registry  # pylint: disable=import-outside-toplevel
  return float(registry.get(cfg.family).train_flops(cfg))
