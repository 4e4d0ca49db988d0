"""The jitted train and eval steps: pure functions of the state pytrees."""


import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxspeech.train.family import Family
from jaxspeech.train.state import TrainState


def _microbatches(batch, accum: int):
  """(B, ...) → (accum, B/accum, ...) taking rows i::accum, so each device keeps its own rows."""
  def split(x):
    if x.shape[0] % accum:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into optim.accum_steps={accum} microbatches")
    return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def make_update(cfg: ml_collections.ConfigDict, tx: optax.GradientTransformation):
  """`update(state, grads) -> (params, opt_state, ema)`: the optimizer and EMA step, once per train step."""
  ema_decay = float(cfg.train.ema_decay)

  def update(state: TrainState, grads):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = None if state.ema is None else jax.tree.map(
        lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema, params)
    return params, opt_state, ema
  return update


def make_train_step(family: Family, cfg: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation, schedules, state_shardings: TrainState, batch_shardings):
  accum = int(cfg.optim.accum_steps)
  apply_update = make_update(cfg, tx)

  def loss_fn(params, rest, batch, key, step):
    # `rest` as fresh Variables of this trace: flax lets a model mutate (BatchNorm's statistics) only those
    model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    loss, metrics = family.loss(model, batch, key, step, cfg)
    return loss, (metrics, nnx.split(model, nnx.Param, ...)[2])  # `rest` as the forward left it: BatchNorm's stats

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def gradients(state: TrainState, batch, key):
    """((mean loss, (mean metrics, rest after the last microbatch)), mean grads)."""
    if accum == 1:
      return grad_fn(state.params, state.rest, batch, key, state.step)

    def body(carry, micro_i):
      acc, rest = carry
      micro, i = micro_i
      (loss, (aux, rest)), grads = grad_fn(state.params, rest, micro, jax.random.fold_in(key, i), state.step)
      return (jax.tree.map(jnp.add, acc, ((loss, aux), grads)), rest), None

    (loss, (aux, _)), grads = jax.eval_shape(grad_fn, state.params, state.rest,
                                             jax.tree.map(lambda x: x[0], _microbatches(batch, accum)), key,
                                             state.step)
    zeros = jax.tree.map(jnp.zeros_like, ((loss, aux), grads))
    (total, rest), _ = jax.lax.scan(body, (zeros, state.rest), (_microbatches(batch, accum), jnp.arange(accum)))
    (loss, aux), grads = jax.tree.map(lambda x: x / accum, total)
    return (loss, (aux, rest)), grads

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    (loss, (aux, rest)), grads = gradients(state, batch, key)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    # A non-finite step leaves the state as it was, so any checkpoint taken later is still good.
    params, opt_state, ema, rest = jax.lax.cond(
        finite, lambda _: (*apply_update(state, grads), rest),
        lambda _: (state.params, state.opt_state, state.ema, state.rest), None)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **aux}
    metrics.update({"lr" if name == "default" else f"lr_{name}": fn(state.step) for name, fn in schedules.items()})
    new_state = state.replace(step=state.step + 1, params=params, rest=rest, opt_state=opt_state, ema=ema)
    return new_state, metrics

  return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, None), donate_argnums=0)


def make_eval_step(family: Family, cfg: ml_collections.ConfigDict, graphdef: nnx.GraphDef, state_shardings,
                   batch_shardings, use_ema: bool = False):
  """`eval_step(state, batch) -> {name: (sum, count)}`, on the EMA params when `use_ema`."""
  def eval_step(state: TrainState, batch):
    params = state.ema if use_ema else state.params
    return family.evaluate(nnx.merge(graphdef, params, state.rest), batch, cfg)
  return jax.jit(eval_step, in_shardings=(state_shardings, batch_shardings))
