"""Linear and norm layers whose params carry logical axis names (see `jaxspeech.sharding`)."""

from collections.abc import Sequence
import math

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype | type


# `model.remat` → what a block keeps for the backward pass (`jax.checkpoint` policy); the rest is recomputed.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def dense(in_features: int | Sequence[int], out_features: int | Sequence[int], axes: Sequence[str | None], *,
          rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, use_bias: bool = True,
          stddev: float = 0.02, torch_init: bool = False) -> nnx.LinearGeneral:
  """A linear map over the trailing `in_features` dims; `axes` names the kernel's dims (in dims, then out dims).

  The kernel starts truncated-normal(`stddev`) with a zero bias, or with `torch_init` as torch's `nn.Linear`:
  kernel and bias U(±1/√fan_in) (kaiming_uniform with a = √5), for models whose reference keeps that init.
  """
  in_shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
  out_shape = (out_features,) if isinstance(out_features, int) else tuple(out_features)
  if len(axes) != len(in_shape) + len(out_shape):
    raise ValueError(f"kernel {in_shape + out_shape} needs {len(in_shape) + len(out_shape)} axis names, got {axes}")
  kernel_init, bias_init = nnx.initializers.truncated_normal(stddev), nnx.initializers.zeros_init()
  if torch_init:
    bound = 1 / math.sqrt(math.prod(in_shape))
    kernel_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=tuple(range(len(in_shape))),
                                                    out_axis=tuple(range(len(in_shape), len(in_shape) + len(out_shape))))
    bias_init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
  return nnx.LinearGeneral(
      in_shape, out_shape, axis=tuple(range(-len(in_shape), 0)), use_bias=use_bias, dtype=dtype,
      param_dtype=param_dtype, rngs=rngs,
      kernel_init=nnx.with_partitioning(kernel_init, tuple(axes)),
      bias_init=nnx.with_partitioning(bias_init, tuple(axes[len(in_shape):])))


def layer_norm(features: int, *, rngs: nnx.Rngs, epsilon: float = 1e-6, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> nnx.LayerNorm:
  """LayerNorm; statistics are computed in float32 whatever `dtype` is."""
  return nnx.LayerNorm(features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)))


def dot_product_attention(q_BxLxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
                          mask_BxHxLxS: jax.Array | None = None) -> jax.Array:
  """softmax(q·kᵀ/√K)·v with the softmax in float32; `mask` is True where attention is allowed."""
  scale = q_BxLxHxK.shape[-1] ** -0.5
  logits_BxHxLxS = jnp.einsum("blhk,bshk->bhls", q_BxLxHxK * scale, k_BxSxHxK,
                              preferred_element_type=jnp.float32)
  if mask_BxHxLxS is not None:
    logits_BxHxLxS = jnp.where(mask_BxHxLxS, logits_BxHxLxS, jnp.finfo(jnp.float32).min)
  probs_BxHxLxS = jax.nn.softmax(logits_BxHxLxS, axis=-1).astype(v_BxSxHxK.dtype)
  return jnp.einsum("bhls,bshk->blhk", probs_BxHxLxS, v_BxSxHxK)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x·Φ(x) = ½x(1 + erf(x/√2)).

  Same function as `jax.nn.gelu(approximate=False)`, which XLA lowers through erfc; the erf form
  compiles to a cheaper forward and backward (5–7 % of an AST train step on CPU, benchmarks/RESULTS.md).
  """
  return 0.5 * x * (1 + jax.lax.erf(x * 0.7071067811865476))
