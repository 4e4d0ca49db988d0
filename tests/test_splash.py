"""The TPU splash-attention path (run by Pallas' interpreter on CPU) against the XLA attention it replaces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from jaxspeech import sharding
from jaxspeech.llasa.model import attention_mask
from jaxspeech.nn import splash
from jaxspeech.train import config

B, L, H, K = 4, 200, 4, 32   # L pads to 256: two 128-blocks, one of them partly padding


def _xla(q, k, v, segments, causal):
  mask = segments[:, :, None] == segments[:, None, :]
  if causal:
    mask = attention_mask(segments, segments, jnp.arange(L))
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])


@pytest.mark.parametrize("causal,groups,mesh", [(True, 2, dict(data=2, fsdp=2, tensor=2)),
                                                (False, 4, dict(data=1, fsdp=4, tensor=1))])
def test_splash_matches_xla_attention(causal, groups, mesh):
  """Values and gradients of q, k and v agree within 2e-5 (float32), with packed rows of 2–3 segments and
  trailing padding, grouped key/value heads, and rows and heads split over the mesh."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((B, L, h, K)), jnp.float32) for h in (H, groups, groups))
  cuts = [(60, 150, 190), (100, 200, 200), (30, 90, 170), (200, 200, 200)]
  segments = jnp.asarray([np.searchsorted(np.array(c), np.arange(L), side="right") + 1 for c in cuts], jnp.int32)
  segments = jnp.where(jnp.arange(L) >= jnp.asarray([c[-1] for c in cuts])[:, None], 0, segments)  # padding
  target = jnp.asarray(rng.standard_normal((B, L, H, K)), jnp.float32)
  sizes = {**dict(data=1, fsdp=1, tensor=1, sequence=1), **mesh}
  devices = sharding.make_mesh(sizes, jax.devices()[:sizes["data"] * sizes["fsdp"] * sizes["tensor"]])
  with sharding.use_rules(devices, config.AXIS_RULES):
    shard = lambda x, axes: jax.device_put(x, NamedSharding(devices, sharding.logical_spec(axes)))  # noqa: E731
    heads = ("activation_batch", None, "activation_heads", None)
    args = [shard(x, heads) for x in (q, k, v)] + [shard(segments, ("activation_batch", None))]

    def loss(attend):
      return lambda q, k, v, s: jnp.sum(attend(q, k, v, s) * target)

    ours = jax.jit(lambda q, k, v, s: splash.attention(q, k, v, s, causal=causal, interpret=True))
    want = _xla(q, jnp.repeat(k, H // groups, 2), jnp.repeat(v, H // groups, 2), segments, causal)
    np.testing.assert_allclose(ours(*args), want, atol=2e-5)
    splash_grad = jax.grad(loss(lambda *a: splash.attention(*a, causal=causal, interpret=True)), argnums=(0, 1, 2))
    xla_grad = jax.grad(loss(lambda q, k, v, s: _xla(q, jnp.repeat(k, H // groups, 2), jnp.repeat(v, H // groups, 2),
                                                     s, causal)), argnums=(0, 1, 2))
    for got, expected in zip(jax.jit(splash_grad)(*args), xla_grad(q, k, v, segments)):
      np.testing.assert_allclose(got, expected, atol=2e-5)


def test_block_size_is_a_whole_number_of_lanes():
  assert [splash.block_size(n) for n in (1, 128, 129, 500, 2048)] == [128, 128, 256, 512, 512]
