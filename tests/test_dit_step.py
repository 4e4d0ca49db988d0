"""A dit training step's loss and gradients under rematerialisation and bf16 compute (random init, CPU)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxspeech.dit.model import DiTConfig, build
from jaxspeech.dit.objective import flow_matching_loss

CFG = DiTConfig(dim=32, depth=1, heads=2, dim_head=16, ff_mult=2, mel_dim=20, text_num_embeds=30, text_dim=16,
                conv_layers=1, key_mask=True)


def batch(seed: int = 0):
  """(mel (3, 40, 20) around a log-mel's scale, frames, text ids with −1 padding)."""
  rng = np.random.default_rng(seed)
  mel = (rng.standard_normal((3, 40, CFG.mel_dim)) * 2 - 5).astype(np.float32)
  frames = np.asarray([40, 31, 17])
  text = np.where(np.arange(20)[None] < np.asarray([[18], [14], [8]]), rng.integers(0, 30, (3, 20)), -1)
  return jnp.asarray(mel), jnp.asarray(frames), jnp.asarray(text)


def loss_and_grads(cfg: DiTConfig, params):
  """The loss and float32 gradients of `cfg`'s model holding `params` (one key for every config)."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0))))
  mel, frames, text = batch()

  def loss(p):
    return flow_matching_loss(nnx.merge(graphdef, p), mel, frames, text, jax.random.PRNGKey(1))[0]

  return jax.jit(jax.value_and_grad(loss))(params), jax.make_jaxpr(jax.grad(loss))(params)


@pytest.fixture(scope="module")
def params():
  model = build(CFG, nnx.Rngs(0))
  # the AdaLN and output layers would start near zero; spread every param so each path carries signal
  state = nnx.state(model)
  keys = iter(jax.random.split(jax.random.PRNGKey(2), len(jax.tree.leaves(state))))
  return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape, p.dtype), state)


@pytest.fixture(scope="module")
def fp32(params):
  return loss_and_grads(CFG, params)


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_keeps_loss_and_gradients(params, fp32, remat):
  ((want_loss, want_grads), _) = fp32
  ((got_loss, got_grads), jaxpr) = loss_and_grads(dataclasses.replace(CFG, remat=remat), params)
  assert "checkpoint" in str(jaxpr) or "remat" in str(jaxpr)  # the blocks are rematerialised
  # the same ops recomputed: float32 rounding only
  np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
  for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-4)


def test_unknown_remat_is_refused():
  with pytest.raises(ValueError, match="remat"):
    DiTConfig(remat="everything")


@pytest.mark.slow
def test_bfloat16_step_is_finite_and_close_to_float32(params, fp32):
  ((want_loss, want_grads), _) = fp32
  ((got_loss, got_grads), jaxpr) = loss_and_grads(dataclasses.replace(CFG, dtype="bfloat16"), params)
  text = str(jaxpr)
  assert "bf16[" in text and "dot_general" in text  # matmuls run in bf16 on the float32 params
  leaves = jax.tree.leaves(got_grads)
  assert all(g.dtype == jnp.float32 for g in leaves)  # gradients land on the float32 params
  assert np.isfinite(float(got_loss)) and all(np.isfinite(np.asarray(g)).all() for g in leaves)
  # bf16 keeps 8 mantissa bits: the loss within 2 %, the gradient's direction within cos ≥ 0.99
  np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=0.02)
  flat = lambda tree: np.concatenate([np.asarray(g, np.float64).ravel() for g in jax.tree.leaves(tree)])
  got, want = flat(got_grads), flat(want_grads)
  assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.99
