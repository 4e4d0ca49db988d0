"""What a run costs: its resolved config, parameter count, tokens per step and FLOPs per step.

The config is resolved by the code `jaxspeech train` resolves it with, from the flags the run is given, so the
counts match the run.
"""

from collections.abc import Mapping
import json
import math
from typing import Any

import jax
import ml_collections

from jaxspeech.train import config, optim, registry, state


def resolve(spec: str, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The config `jaxspeech train --config=spec` runs with these overrides (given as its flags)."""
  return config.load(spec, [flag(k, v) for k, v in overrides.items()])


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


def tokens_per_step(cfg: ml_collections.ConfigDict) -> float:
  """What one global batch contributes to D, as the family declares it (`Family.tokens_per_step`)."""
  return float(registry.get(cfg.family).tokens_per_step(cfg))


_PARAMS: dict[str, tuple[int, dict[str, int]]] = {}


def _counts(cfg: ml_collections.ConfigDict) -> tuple[int, dict[str, int]]:
  """(params that train, {module (first two path names): params} of those in the "frozen" group), from the
  abstract model:
  nothing is allocated."""
  key = json.dumps({"family": cfg.family, "model": cfg.model.to_dict()}, sort_keys=True)
  if key not in _PARAMS:
    family = registry.get(cfg.family)
    _, params, _ = state.abstract_model(family, cfg)
    trained, frozen = 0, {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
      names = optim.param_path(path)
      size = math.prod(leaf.shape)
      if family.param_groups is not None and family.param_groups(names, leaf) == "frozen":
        module = ".".join(names[:2])
        frozen[module] = frozen.get(module, 0) + size
      else:
        trained += size
    _PARAMS[key] = trained, frozen
  return _PARAMS[key]


def param_count(cfg: ml_collections.ConfigDict) -> int:
  """N of a scaling law: the params that train (every nnx.Param outside the family's "frozen" group)."""
  return _counts(cfg)[0]


def frozen_params(cfg: ml_collections.ConfigDict) -> dict[str, int]:
  """The params N leaves out, by module: a frozen teacher, a PETL method's frozen backbone."""
  return dict(_counts(cfg)[1])


def flops_per_step(cfg: ml_collections.ConfigDict) -> float:
  """The family's analytic FLOPs of one training step (forward + backward) on the global batch."""
  return float(registry.get(cfg.family).train_flops(cfg))
