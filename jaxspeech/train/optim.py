"""Optimizers: AdamW over parameter groups, warmup + cosine/linear schedules, clipping."""

from collections.abc import Callable

import jax
import ml_collections
import optax
from flax import nnx

NO_DECAY_NAMES = ("bias", "scale")


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine or linear decay to `lr * end_lr_factor` at `total_steps`."""
  warmup = int(cfg.warmup_steps)
  decay_steps = max(total_steps - warmup, 1)
  end = cfg.lr * cfg.end_lr_factor
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_factor)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(cfg.lr, end, decay_steps)
  elif cfg.schedule == "constant":
    decay = optax.constant_schedule(cfg.lr)
  else:
    raise ValueError(f"optim.schedule must be cosine, linear or constant, got {cfg.schedule!r}")
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def group_labels(params, group_of: Callable[[tuple[str, ...], jax.Array], str]):
  """The tree of `params` with each leaf replaced by its group name, `group_of(path, leaf)`."""
  return jax.tree_util.tree_map_with_path(lambda path, x: group_of(param_path(path), x), params)


def param_path(path) -> tuple[str, ...]:
  """('blocks', '0', 'attn', 'query', 'kernel') for a jax key path into an nnx.State."""
  return tuple(str(getattr(k, "key", getattr(k, "idx", None))) for k in path
               if not isinstance(k, jax.tree_util.GetAttrKey))


def decay_mask(params: nnx.State) -> nnx.State:
  """True for params that get weight decay: not norms' scales, not biases, nothing 1-D."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x.ndim > 1 and param_path(path)[-1] not in NO_DECAY_NAMES, params)


def _adamw(cfg: ml_collections.ConfigDict, lr) -> optax.GradientTransformation:
  if cfg.name != "adamw":
    raise ValueError(f"optim.name must be 'adamw', got {cfg.name!r}")
  return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)


def make(cfg: ml_collections.ConfigDict, total_steps: int, params: nnx.State,
         group_of: Callable[[tuple[str, ...], jax.Array], str] | None = None
         ) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
  """The full transformation (per group: clip by that group's global norm → AdamW) and each group's schedule.

  `cfg.groups` maps a group name to overrides of `cfg` (e.g. {"head": {"lr": 1e-3}}); the group
  "frozen" gets no updates and no optimizer state. Each group clips its own gradients (a GAN's
  generator and discriminator must not share one norm). Without `group_of`, every param is "default".
  """
  groups = {"default": {}, **{k: dict(v) for k, v in cfg.get("groups", {}).items()}}
  schedules, transforms = {}, {}
  for name, overrides in groups.items():
    if name == "frozen":
      transforms[name] = optax.set_to_zero()
      continue
    group_cfg = ml_collections.ConfigDict({**cfg.to_dict(), **overrides})
    schedules[name] = schedule(group_cfg, total_steps)
    transforms[name] = _adamw(group_cfg, schedules[name])
    if group_cfg.clip_norm:
      transforms[name] = optax.chain(optax.clip_by_global_norm(group_cfg.clip_norm), transforms[name])
  if group_of is None:
    tx = transforms["default"]
  else:
    labels = group_labels(params, group_of)
    unknown = set(jax.tree.leaves(labels)) - set(transforms)
    if unknown:
      raise KeyError(f"param groups {sorted(unknown)} have no entry in optim.groups")
    tx = optax.multi_transform(transforms, labels)
  return tx, schedules

