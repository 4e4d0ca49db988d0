"""Linear and norm layers whose params carry logical axis names (see `jaxspeech.sharding`), attention and RoPE."""

from collections.abc import Sequence
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech import sharding
from jaxspeech.nn import splash

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


def rms_norm(features: int, *, rngs: nnx.Rngs, epsilon: float = 1e-6, dtype: Dtype = jnp.float32,
             param_dtype: Dtype = jnp.float32) -> nnx.RMSNorm:
  """RMSNorm, x / √(mean(x²) + ε) · g; statistics are computed in float32 whatever `dtype` is."""
  return nnx.RMSNorm(features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                     scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)))


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
  """RoPE's inverse frequencies θ^(−2i/K) for i < K/2 (K = `head_dim`), float32."""
  return 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))


def apply_rope(x_BxLxHxK: jax.Array, angles_BxLxK2: jax.Array) -> jax.Array:
  """Rotates the pairs (x[i], x[i + K/2]) of every head by angles[..., i] (HF's rotate_half), in float32."""
  cos_BxLx1xK = jnp.cos(jnp.concatenate([angles_BxLxK2] * 2, -1))[:, :, None]
  sin_BxLx1xK = jnp.sin(jnp.concatenate([angles_BxLxK2] * 2, -1))[:, :, None]
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x_BxLxHxK * cos_BxLx1xK + rotated * sin_BxLx1xK).astype(x_BxLxHxK.dtype)


def dot_product_attention(q_BxLxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
                          mask_BxHxLxS: jax.Array | None = None, *, block_bytes: int = 0) -> jax.Array:
  """softmax(q·kᵀ/√K)·v with the softmax in float32; `mask` is True where attention is allowed.

  Heads-major inside, with FlashAttention's backward (Dao et al. 2022, eq. 4): for logits s = q·kᵀ/√K,
  P = softmax(s) and O = P·v, the softmax's gradient is dS = P ∘ (dP − δ) with δ = rowsum(dO ∘ O), a
  (B, H, L) reduction instead of one over P ∘ dP; only P is kept for the backward. (AST step at 302 tokens on a
  2-core CPU, 2026-11-27: −3 % time and −18 % XLA temp memory against autodiff of the same attention.)

  On TPU, self-attention without a mask over rows of ≥ 128 tokens runs the Pallas splash kernel (`splash`).
  On CPU, `block_bytes` > 0 attends a block of batch rows at a time, as many rows of each device's batch as keep the
  block's float32 logits within `block_bytes` (at least one), so they stay in cache: with 1 MiB, an AST step
  at 302 tokens took 5 % less time on a 2-core CPU (benchmarks/RESULTS.md). Blocks are cut within each batch
  shard of the active sharding rules, so no block spans devices.
  """
  (b, l, h, _), s = q_BxLxHxK.shape, k_BxSxHxK.shape[1]
  if mask_BxHxLxS is None and use_splash(q_BxLxHxK, k_BxSxHxK):
    return splash.attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, jnp.ones((b, l), jnp.int32), causal=False)
  rows = max(1, block_bytes // (4 * h * l * s))
  args = (q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxHxLxS)
  if block_bytes <= 0 or sharding.platform() != "cpu" or rows >= b // sharding.shards("activation_batch"):
    return _heads_major(*args)
  return _in_row_blocks(_heads_major, rows, *args)


def use_splash(q_BxLxHxK: jax.Array, k_BxSxGxK: jax.Array) -> bool:
  """Whether self-attention of these shapes runs the splash kernel: on TPU, rows of ≥ 128 tokens (shorter ones
  would be mostly padding), and a batch and heads that split as the kernel needs."""
  return (sharding.platform() == "tpu" and q_BxLxHxK.shape[1] == k_BxSxGxK.shape[1] >= splash.LANES
          and splash.supported(q_BxLxHxK, k_BxSxGxK))


def _heads_major(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxHxLxS):
  q_BxHxLxK, k_BxHxSxK, v_BxHxSxK = (jnp.swapaxes(x, 1, 2) for x in (q_BxLxHxK, k_BxSxHxK, v_BxSxHxK))
  out_BxHxLxK = _attend(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, mask_BxHxLxS)
  return jnp.swapaxes(out_BxHxLxK, 1, 2)


def _in_row_blocks(fn, rows: int, *xs):
  """fn over blocks of `rows` rows of each batch shard (None args stay None), concatenated back in order.

  (B, ...) is viewed as (shards, B/shards, ...) with the shards major, as the batch is laid out over devices,
  and blocks are cut from the second axis: each block is (shards × rows, ...), `rows` rows per device.
  """
  batch = xs[0].shape[0]
  n = sharding.shards("activation_batch")
  n = n if batch % n == 0 else 1
  split = [None if x is None else x.reshape(n, batch // n, *x.shape[1:]) for x in xs]
  outs = [fn(*(None if x is None else x[:, i:i + rows].reshape(-1, *x.shape[2:]) for x in split))
          for i in range(0, batch // n, rows)]
  out = jnp.concatenate([o.reshape(n, -1, *o.shape[1:]) for o in outs], axis=1)
  return out.reshape(batch, *out.shape[2:])


def _attend_forward(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, mask_BxHxLxS):
  scale = q_BxHxLxK.shape[-1] ** -0.5
  logits_BxHxLxS = jnp.einsum("bhlk,bhsk->bhls", q_BxHxLxK * scale, k_BxHxSxK, preferred_element_type=jnp.float32)
  if mask_BxHxLxS is not None:
    logits_BxHxLxS = jnp.where(mask_BxHxLxS, logits_BxHxLxS, jnp.finfo(jnp.float32).min)
  probs_BxHxLxS = jax.nn.softmax(logits_BxHxLxS, axis=-1).astype(v_BxHxSxK.dtype)
  return jnp.einsum("bhls,bhsk->bhlk", probs_BxHxLxS, v_BxHxSxK), probs_BxHxLxS


@jax.custom_vjp
def _attend(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, mask_BxHxLxS):
  return _attend_forward(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, mask_BxHxLxS)[0]


def _attend_fwd(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, mask_BxHxLxS):
  out_BxHxLxK, probs_BxHxLxS = _attend_forward(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, mask_BxHxLxS)
  return out_BxHxLxK, (q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, mask_BxHxLxS, probs_BxHxLxS, out_BxHxLxK)


def _attend_bwd(res, d_out_BxHxLxK):
  q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, mask_BxHxLxS, probs_BxHxLxS, out_BxHxLxK = res
  scale = q_BxHxLxK.shape[-1] ** -0.5
  d_probs_BxHxLxS = jnp.einsum("bhlk,bhsk->bhls", d_out_BxHxLxK, v_BxHxSxK, preferred_element_type=jnp.float32)
  delta_BxHxL = jnp.einsum("bhlk,bhlk->bhl", d_out_BxHxLxK, out_BxHxLxK, preferred_element_type=jnp.float32)
  # masked logits have P = 0, so their gradient is 0 too; scaled once for both q and k
  d_scaled_BxHxLxS = (probs_BxHxLxS * (d_probs_BxHxLxS - delta_BxHxL[..., None]) * scale).astype(q_BxHxLxK.dtype)
  d_mask = None if mask_BxHxLxS is None else np.zeros(mask_BxHxLxS.shape, jax.dtypes.float0)
  return (jnp.einsum("bhls,bhsk->bhlk", d_scaled_BxHxLxS, k_BxHxSxK),
          jnp.einsum("bhls,bhlk->bhsk", d_scaled_BxHxLxS, q_BxHxLxK),
          jnp.einsum("bhls,bhlk->bhsk", probs_BxHxLxS, d_out_BxHxLxK), d_mask)


_attend.defvjp(_attend_fwd, _attend_bwd)


def conv1d(x_BxLxI: jax.Array, kernel_KxIxO: jax.Array, *, stride: int = 1, dilation: int = 1,
           padding: tuple[int, int] = (0, 0), groups: int = 1) -> jax.Array:
  """Conv1d over channel-last (B, L, I) with a (K, I/groups, O) kernel."""
  return jax.lax.conv_general_dilated(
      x_BxLxI, kernel_KxIxO, window_strides=(stride,), padding=(padding,), rhs_dilation=(dilation,),
      dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x·Φ(x) = ½x(1 + erf(x/√2)).

  Same function as `jax.nn.gelu(approximate=False)`, which XLA lowers through erfc; the erf form
  compiles to a cheaper forward and backward (5–7 % of an AST train step on a 2-core CPU).
  """
  return 0.5 * x * (1 + jax.lax.erf(x * 0.7071067811865476))
