"""Logical axis names → mesh axes, in MaxText's style.

Params name their dims when created (`nnx.with_partitioning(init, ("embed", "mlp"))`); activations
are constrained at block boundaries with `constrain(x, ("activation_batch", "activation_length",
"activation_embed"))`. Rules (from the config) say which mesh axes each logical name maps to.
"""

from collections.abc import Sequence
import contextlib
import math
import threading

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | Sequence[str] | None]]

_active = threading.local()


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: Rules):
  """Makes `mesh` and `rules` current for `constrain`, `logical_spec` and flax's partition specs."""
  rules = tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in rules)
  previous = getattr(_active, "value", None)
  _active.value = (mesh, dict(rules))
  try:
    with nnx.logical_axis_rules(rules):
      yield
  finally:
    _active.value = previous


def current() -> tuple[Mesh, dict]:
  """(mesh, {logical name: mesh axes}) of the active `use_rules`."""
  value = getattr(_active, "value", None)
  if value is None:
    raise RuntimeError("no sharding rules are active; wrap the call in `jaxspeech.sharding.use_rules(mesh, rules)`")
  return value


def logical_spec(names: Sequence[str | None]) -> PartitionSpec:
  _, rules = current()
  missing = [n for n in names if n is not None and n not in rules]
  if missing:
    raise KeyError(f"logical axes {missing} have no sharding rule; add them to config.axis_rules")
  return PartitionSpec(*(rules[n] if n is not None else None for n in names))


def platform() -> str:
  """The platform a step is being traced for: that of the active mesh's devices (virtual TPU devices when
  `jaxspeech plan --topology` compiles for a pod on a CPU host), else JAX's default backend. Kernels and
  platform-specific tricks choose by this, never by `jax.default_backend()`."""
  value = getattr(_active, "value", None)
  return value[0].devices.flat[0].platform if value is not None else jax.default_backend()


def shards(name: str) -> int:
  """How many pieces the active rules split logical axis `name` into (1 when no rules are active)."""
  value = getattr(_active, "value", None)
  if value is None:
    return 1
  mesh, rules = value
  axes = rules.get(name)
  return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding; a no-op when no rules are active (e.g. plain eager use)."""
  if getattr(_active, "value", None) is None:
    return x
  mesh, _ = current()
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_spec(names)))


def param_shardings(tree, mesh: Mesh):
  """NamedShardings for a tree of nnx Variables (params, or optimizer state built from them).

  A Variable with no arrays in it (optax's MaskedNode: a param outside an optimizer group) stays as it is,
  so the result has the structure of `tree`.
  """
  _, rules = current()
  def spec(x):
    empty = isinstance(x, nnx.Variable) and not jax.tree.leaves(x.get_raw_value())
    return x if empty else nnx.get_partition_spec(x)

  specs = jax.tree.map(spec, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
  for spec in jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, PartitionSpec)):
    for axis in spec:
      for a in axis if isinstance(axis, tuple) else (axis,):
        if a is not None and a not in mesh.axis_names:
          raise KeyError(f"logical axis {a!r} has no sharding rule; add it to config.axis_rules")
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, PartitionSpec))
