"""The train state, created directly in its sharded layout."""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspeech import sharding
from jaxspeech.data import pipeline
from jaxspeech.train.family import Family


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: updates applied so far
  params: nnx.State          # nnx.Param variables (float32 master weights)
  rest: nnx.State            # the model's other variables (not optimised)
  opt_state: optax.OptState
  ema: nnx.State | None      # exponential moving average of params, when train.ema_decay > 0
  rng: jax.Array             # uint32[2] base key; step keys are fold_in(rng, step)


def abstract_model(family: Family, cfg: ml_collections.ConfigDict):
  """(graphdef, abstract params, abstract rest) without allocating anything."""
  model = nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0)))
  return nnx.split(model, nnx.Param, ...)


def state_shardings(abstract: TrainState, mesh: Mesh) -> TrainState:
  """Params, EMA and optimizer moments follow the logical axis rules; scalars are replicated. ValueError, naming
  the param, when the mesh splits one of its dims into pieces that do not divide it."""
  replicated = NamedSharding(mesh, PartitionSpec())
  shardings = TrainState(
      step=replicated, rng=replicated,
      params=sharding.param_shardings(abstract.params, mesh),
      rest=sharding.param_shardings(abstract.rest, mesh),
      opt_state=sharding.param_shardings(abstract.opt_state, mesh),
      ema=None if abstract.ema is None else sharding.param_shardings(abstract.ema, mesh))
  jax.tree_util.tree_map_with_path(_check_divides, abstract.params, shardings.params)
  return shardings


def _check_divides(path, leaf, shard: NamedSharding) -> None:
  for dim, (size, axes) in enumerate(zip(leaf.shape, shard.spec)):
    axes = (axes,) if isinstance(axes, str) else axes or ()
    pieces = int(np.prod([shard.mesh.shape[a] for a in axes]))
    if size % pieces:
      name = "/".join(str(k.key if hasattr(k, "key") else k.idx) for k in path if not hasattr(k, "name"))
      split = " × ".join(f"{a}={shard.mesh.shape[a]}" for a in axes)
      raise ValueError(f"the mesh splits dim {dim} (size {size}) of param {name} {tuple(leaf.shape)} over {split}, "
                       f"which does not divide it; pick mesh sizes that divide the model's dims")


def make_init(family: Family, cfg: ml_collections.ConfigDict, tx: optax.GradientTransformation):
  """`init(seed) -> TrainState` (traceable), building the model from `cfg`."""
  def init(seed):
    key = jax.random.PRNGKey(seed)
    model_key, rng = jax.random.split(key)
    model = family.build_model(cfg, nnx.Rngs(model_key))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    ema = jax.tree.map(jnp.copy, params) if cfg.train.ema_decay else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                      ema=ema, rng=rng)
  return init


def create(family: Family, cfg: ml_collections.ConfigDict, tx: optax.GradientTransformation, mesh: Mesh
           ) -> tuple[TrainState, TrainState]:
  """(state, shardings): a fresh state initialised on the devices in its final layout."""
  init = make_init(family, cfg, tx)
  abstract = jax.eval_shape(init, cfg.seed)
  shardings = state_shardings(abstract, mesh)
  return jax.jit(init, static_argnums=0, out_shardings=shardings)(cfg.seed), shardings


def abstract_state(family: Family, cfg: ml_collections.ConfigDict, tx: optax.GradientTransformation, mesh: Mesh
                   ) -> tuple[TrainState, TrainState]:
  """(abstract state with shardings, shardings): the restore target for a checkpoint on `mesh`."""
  abstract = jax.eval_shape(make_init(family, cfg, tx), cfg.seed)
  shardings = state_shardings(abstract, mesh)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return target, shardings


def batch_shapes(family: Family, cfg: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
  """The family's `batch_shapes`, or the shapes of one batch of the config's dataset."""
  if family.batch_shapes is not None:
    return family.batch_shapes(cfg)
  iterator = pipeline.make_iterator(family.make_data(cfg, cfg.data.train_split, train=True, shard_index=0,
                                                     shard_count=1))
  batch = next(iterator)
  iterator.close()
  return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in batch.items()}


def param_count(params) -> int:
  """Parameters in an (abstract) params tree."""
  return sum(x.size for x in jax.tree.leaves(params) if hasattr(x, "shape"))
