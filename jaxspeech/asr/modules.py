"""FastConformer parts (HF `modeling_parakeet` semantics): the 2-D conv subsampling, relative-position attention,
the convolution module and the feed-forward module, on channel-last activations (B, N, D).

Padded frames (mask False) never reach a valid frame: the subsampling zeroes them after every conv, the conv
module zeroes them before its depthwise conv, and attention masks them as keys. Their own outputs are garbage.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspeech.nn import layers
from jaxspeech.sharding import constrain

ACTIVATIONS = {  # HF's ACT2FN names
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": layers.gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "tanh": jnp.tanh,
}
INIT = nnx.initializers.truncated_normal(0.02)
MLP_AXES = ("activation_batch", "activation_length", "activation_mlp")


def conv_length(lengths, kernel: int, stride: int):
  """Valid frames after a conv of `kernel` and `stride` with padding (kernel - 1) // 2 on each side."""
  return (lengths + 2 * ((kernel - 1) // 2) - kernel) // stride + 1


def relative_positions(frames: int, dim: int) -> jax.Array:
  """Sinusoids (2N - 1, D) float32 of the relative positions N - 1, ..., -(N - 1): sin in even dims, cos in odd."""
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles_PxD2 = jnp.arange(frames - 1, -frames, -1, dtype=jnp.float32)[:, None] * inv_freq
  return jnp.stack([jnp.sin(angles_PxD2), jnp.cos(angles_PxD2)], axis=-1).reshape(2 * frames - 1, dim)


def rel_shift(scores_BxHxNxP: jax.Array) -> jax.Array:
  """Transformer-XL's shift (its appendix B): out[..., i, j] = scores[..., i, N - 1 - i + j], (B, H, N, N).

  Column p of `scores` is relative position N - 1 - p, so out[i, j] is the score for position i - j.
  """
  b, h, n, p = scores_BxHxNxP.shape
  padded_BxHxNxP1 = jnp.pad(scores_BxHxNxP, ((0, 0), (0, 0), (0, 0), (1, 0)))
  shifted_BxHxPxN = padded_BxHxNxP1.reshape(b, h, p + 1, n)[:, :, 1:]
  return shifted_BxHxPxN.reshape(b, h, n, p)[..., :n]


def conv2d(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int, dtype,
           rngs: nnx.Rngs) -> nnx.Conv:
  """torch `Conv2d(in, out, kernel, stride, padding=(kernel - 1) // 2, groups)` on (B, T, F, C)."""
  pad = (kernel - 1) // 2
  return nnx.Conv(in_channels, out_channels, kernel_size=(kernel, kernel), strides=(stride, stride),
                  padding=((pad, pad), (pad, pad)), feature_group_count=groups, dtype=dtype, rngs=rngs,
                  kernel_init=nnx.with_partitioning(INIT, (None, None, None, "embed")),
                  bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)))


class Subsampling(nnx.Module):
  """Depthwise-separable conv subsampling over time and frequency by stride^`strided`, then a linear map to D.

  Conv 1 -> C and ReLU, then `strided` - 1 times a depthwise conv, a pointwise conv and ReLU; time frames at
  or past each row's valid length are zeroed after every conv. The mel input itself is not masked (as HF).
  """

  def __init__(self, mels: int, channels: int, kernel: int, stride: int, strided: int, dim: int, dtype,
               rngs: nnx.Rngs):
    self.kernel, self.stride = kernel, stride
    self.first = conv2d(1, channels, kernel, stride, 1, dtype, rngs)
    self.depthwise = nnx.List([conv2d(channels, channels, kernel, stride, channels, dtype, rngs)
                               for _ in range(strided - 1)])
    self.pointwise = nnx.List([conv2d(channels, channels, 1, 1, 1, dtype, rngs) for _ in range(strided - 1)])
    freq = mels
    for _ in range(strided):
      freq = conv_length(freq, kernel, stride)
    self.out = layers.dense((freq, channels), dim, (None, None, "embed"), rngs=rngs, dtype=dtype)

  def __call__(self, mel_BxTxM: jax.Array, lengths_B: jax.Array) -> jax.Array:
    """(B, N, D) for N = the conv output length of T."""
    def masked(x_BxNxFxC, lengths_B):
      valid_BxN = jnp.arange(x_BxNxFxC.shape[1]) < lengths_B[:, None]
      return jnp.where(valid_BxN[:, :, None, None], x_BxNxFxC, 0)

    lengths_B = conv_length(lengths_B, self.kernel, self.stride)
    x_BxNxFxC = jax.nn.relu(masked(self.first(mel_BxTxM[..., None]), lengths_B))
    for depthwise, pointwise in zip(self.depthwise, self.pointwise):
      lengths_B = conv_length(lengths_B, self.kernel, self.stride)
      x_BxNxFxC = masked(depthwise(x_BxNxFxC), lengths_B)
      x_BxNxFxC = jax.nn.relu(masked(pointwise(x_BxNxFxC), lengths_B))
    x_BxNxFxC = constrain(x_BxNxFxC, ("activation_batch", "activation_length", None, None))
    return self.out(x_BxNxFxC)


class FeedForward(nnx.Module):
  """linear, activation, dropout, linear."""

  def __init__(self, dim: int, hidden: int, bias: bool, activation: str, dropout: float, dtype, rngs: nnx.Rngs):
    self.fc1 = layers.dense(dim, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype, use_bias=bias)
    self.fc2 = layers.dense(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype, use_bias=bias)
    self.dropout = nnx.Dropout(dropout)
    self.activation = activation

  def __call__(self, x_BxNxD: jax.Array, deterministic: bool, key: jax.Array | None) -> jax.Array:
    h_BxNxF = constrain(ACTIVATIONS[self.activation](self.fc1(x_BxNxD)), MLP_AXES)
    return self.fc2(self.dropout(h_BxNxF, deterministic=deterministic, rngs=key))


class RelPositionAttention(nnx.Module):
  """Multi-head self-attention with Transformer-XL relative positions (Dai et al. 2019, section 3.3).

  score(i, j) = ((q_i + u)·k_j + (q_i + v)·W_R r_{i-j}) / √K, with learned per-head biases u, v and the
  sinusoid r of the relative position i - j; softmax in float32 over the valid keys.
  """

  def __init__(self, dim: int, heads: int, bias: bool, dropout: float, dtype, rngs: nnx.Rngs):
    k = dim // heads
    common = dict(rngs=rngs, dtype=dtype)
    self.q = layers.dense(dim, (heads, k), ("embed", "heads", "kv"), use_bias=bias, **common)
    self.k = layers.dense(dim, (heads, k), ("embed", "heads", "kv"), use_bias=bias, **common)
    self.v = layers.dense(dim, (heads, k), ("embed", "heads", "kv"), use_bias=bias, **common)
    self.pos = layers.dense(dim, (heads, k), ("embed", "heads", "kv"), use_bias=False, **common)
    self.o = layers.dense((heads, k), dim, ("heads", "kv", "embed"), use_bias=bias, **common)
    self.bias_u = nnx.Param(INIT(rngs.params(), (heads, k)), out_sharding=("heads", "kv"))
    self.bias_v = nnx.Param(INIT(rngs.params(), (heads, k)), out_sharding=("heads", "kv"))
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x_BxNxD: jax.Array, pos_PxD: jax.Array, mask_BxN: jax.Array, deterministic: bool,
               key: jax.Array | None) -> jax.Array:
    heads_axes = ("activation_batch", "activation_length", "activation_heads", "kv")
    q_BxNxHxK = constrain(self.q(x_BxNxD), heads_axes)
    k_BxNxHxK = constrain(self.k(x_BxNxD), heads_axes)
    v_BxNxHxK = constrain(self.v(x_BxNxD), heads_axes)
    r_PxHxK = self.pos(pos_PxD)
    dtype = q_BxNxHxK.dtype
    content_BxHxNxN = jnp.einsum("bnhk,bmhk->bhnm", q_BxNxHxK + self.bias_u[...].astype(dtype), k_BxNxHxK,
                                 preferred_element_type=jnp.float32)
    position_BxHxNxP = jnp.einsum("bnhk,phk->bhnp", q_BxNxHxK + self.bias_v[...].astype(dtype), r_PxHxK,
                                  preferred_element_type=jnp.float32)
    scores_BxHxNxN = (content_BxHxNxN + rel_shift(position_BxHxNxP)) * q_BxNxHxK.shape[-1] ** -0.5
    pairs_Bx1xNxN = (mask_BxN[:, :, None] & mask_BxN[:, None, :])[:, None]
    scores_BxHxNxN = jnp.where(pairs_Bx1xNxN, scores_BxHxNxN, jnp.finfo(jnp.float32).min)
    probs_BxHxNxN = self.dropout(jax.nn.softmax(scores_BxHxNxN, axis=-1), deterministic=deterministic, rngs=key)
    out_BxNxHxK = jnp.einsum("bhnm,bmhk->bnhk", probs_BxHxNxN.astype(dtype), v_BxNxHxK)
    return self.o(constrain(out_BxNxHxK, heads_axes))


class ConvModule(nnx.Module):
  """Pointwise conv to 2D channels, GLU, depthwise conv over time, BatchNorm, activation, pointwise conv.

  The pointwise convs are linear maps; the first keeps GLU's two halves (value, gate) on an axis of its own.
  BatchNorm normalises with the batch's statistics over every frame, padding included (as torch's
  BatchNorm1d), when not `deterministic`, and with the running ones otherwise. (flax updates the running
  variance with the biased batch variance, torch with the unbiased one: a factor frames / (frames - 1).)
  """

  def __init__(self, dim: int, kernel: int, bias: bool, activation: str, dtype, rngs: nnx.Rngs):
    self.pointwise1 = layers.dense(dim, (2, dim), ("embed", None, "mlp"), rngs=rngs, dtype=dtype, use_bias=bias)
    self.depthwise = nnx.Param(INIT(rngs.params(), (kernel, 1, dim)), out_sharding=(None, None, "mlp"))
    self.depthwise_bias = nnx.Param(jnp.zeros((dim,)), out_sharding=("mlp",)) if bias else None
    self.norm = nnx.BatchNorm(dim, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs,
                              scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
                              bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)))
    self.pointwise2 = layers.dense(dim, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype, use_bias=bias)
    self.activation = activation

  def __call__(self, x_BxNxD: jax.Array, mask_BxN: jax.Array, deterministic: bool) -> jax.Array:
    h_BxNx2xD = self.pointwise1(x_BxNxD)
    h_BxNxD = h_BxNx2xD[:, :, 0] * jax.nn.sigmoid(h_BxNx2xD[:, :, 1])
    h_BxNxD = constrain(jnp.where(mask_BxN[..., None], h_BxNxD, 0), MLP_AXES)
    kernel = self.depthwise.shape[0]
    h_BxNxD = layers.conv1d(h_BxNxD, self.depthwise[...].astype(h_BxNxD.dtype),
                            padding=((kernel - 1) // 2, (kernel - 1) // 2), groups=h_BxNxD.shape[-1])
    if self.depthwise_bias is not None:
      h_BxNxD = h_BxNxD + self.depthwise_bias[...].astype(h_BxNxD.dtype)
    h_BxNxD = ACTIVATIONS[self.activation](self.norm(h_BxNxD, use_running_average=deterministic))
    return self.pointwise2(constrain(h_BxNxD, MLP_AXES))
