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
