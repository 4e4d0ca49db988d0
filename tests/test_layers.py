"""Shared layers against plain JAX definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspeech.nn import layers


def reference_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxHxLxS=None):
  logits = jnp.einsum("blhk,bshk->bhls", q_BxLxHxK, k_BxSxHxK) / np.sqrt(q_BxLxHxK.shape[-1])
  if mask_BxHxLxS is not None:
    logits = jnp.where(mask_BxHxLxS, logits, -1e30)
  return jnp.einsum("bhls,bshk->blhk", jax.nn.softmax(logits, axis=-1), v_BxSxHxK)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_and_its_flash_style_gradient_match_autodiff(masked):
  """Values and gradients (q, k, v) of the custom-VJP attention equal autodiff of softmax(q·kᵀ/√K)·v: ≤ 1e-5."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 7, 3, 8)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(rng.random((2, 3, 7, 7)) < 0.7) | jnp.eye(7, dtype=bool) if masked else None
  target = jnp.asarray(rng.standard_normal((2, 7, 3, 8)), jnp.float32)
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, mask) * target) + jnp.sum(fn(q, k, v, mask) ** 2)  # noqa: E731
  np.testing.assert_allclose(layers.dot_product_attention(q, k, v, mask), reference_attention(q, k, v, mask),
                             atol=1e-5)
  got = jax.grad(loss(layers.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(reference_attention), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize("mesh_data", [1, 2])
def test_attention_in_row_blocks_matches_whole_batch_and_stays_on_each_device(mesh_data):
  """`block_bytes` (blocks of 1 row, a remainder block of 2 on one device) gives the whole-batch values and
  gradients (≤ 1e-6); with the batch sharded over `data`, the blocks are cut per device: no collective op."""
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  from jaxspeech import sharding

  rng = np.random.default_rng(1)
  b, l, h, k = 6, 5, 2, 4
  q, kk, v = (jnp.asarray(rng.standard_normal((b, l, h, k)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(rng.random((b, h, l, l)) < 0.7) | jnp.eye(l, dtype=bool)
  one_row = 4 * h * l * l  # logits bytes of one row: blocks of 1 row
  mesh = jax.make_mesh((mesh_data,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:mesh_data])

  def loss(block_bytes):
    def f(q, kk, v, mask):
      out = layers.dot_product_attention(q, kk, v, mask, block_bytes=block_bytes)
      return jnp.sum(out * jnp.cos(out)), out
    return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)

  batch = NamedSharding(mesh, P("data"))
  args = [jax.device_put(x, batch) for x in (q, kk, v, mask)]
  with sharding.use_rules(mesh, [("activation_batch", "data")]):
    assert sharding.shards("activation_batch") == mesh_data
    blocked, whole = jax.jit(loss(one_row)), jax.jit(loss(0))
    (_, out_b), grads_b = blocked(*args)
    (_, out_w), grads_w = whole(*args)
    grads_only = jax.jit(lambda *a: loss(one_row)(*a)[1])  # no scalar loss to sum over devices
    hlo = grads_only.lower(*args).compile().as_text()
  np.testing.assert_allclose(out_b, out_w, atol=1e-6)
  np.testing.assert_allclose(out_w, reference_attention(q, kk, v, mask), atol=1e-5)
  for g_b, g_w in zip(grads_b, grads_w):
    np.testing.assert_allclose(g_b, g_w, atol=1e-6)
  assert hlo.count("fusion(") + hlo.count(" dot(") > 6  # really cut into blocks: several attention ops
  for collective in ("all-gather", "all-to-all", "collective-permute", "all-reduce"):
    assert collective not in hlo


def test_rope_keeps_norms_and_scores_depend_on_the_offset_only():
  """Rotating q and k by their positions keeps each vector's norm, and q·k depends on the positions' offset."""
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.standard_normal((1, 1, 2, 16)), jnp.float32) for _ in range(2))
  inv_freq = layers.rope_inv_freq(16, 10_000.0)
  rotate = lambda x, p: layers.apply_rope(x, jnp.full((1, 1), p, jnp.float32)[..., None] * inv_freq)  # noqa: E731
  np.testing.assert_allclose(jnp.linalg.norm(rotate(q, 7.0), axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-6)
  score = lambda i, j: jnp.sum(rotate(q, i) * rotate(k, j), -1)  # noqa: E731
  np.testing.assert_allclose(score(9.0, 4.0), score(105.0, 100.0), rtol=1e-5)
