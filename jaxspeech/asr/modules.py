"""FastConformer parts (HF `modeling_parakeet` semantics): the 2-D conv subsampling, relative-position attention,
the convolution module and the feed-forward module, on channel-last activations (B, N, D).

Padded frames (mask False) never reach a valid frame: the subsampling zeroes them after every conv, the conv
module zeroes them before its depthwise conv, and attention masks them as keys. Their own outputs are garbage.

Cache-aware streaming (NeMo's `causal_downsampling`, `conv_context_size` and `chunked_limited` attention) adds a
causal subsampling, a depthwise conv whose look-ahead taps stop at the chunk's end, and attention over keys
given apart from the queries (a cache of past keys and values followed by the chunk's own); each part has a
`step` that carries its cache from one chunk to the next.
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


def relative_positions(keys: int, dim: int, queries: int | None = None) -> jax.Array:
  """Sinusoids (M + C - 1, D) float32 of the relative positions M - 1, ..., -(C - 1) between C queries that are
  the last of M keys (C = M when not given): sin in even dims, cos in odd."""
  queries = keys if queries is None else queries
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles_PxD2 = jnp.arange(keys - 1, -queries, -1, dtype=jnp.float32)[:, None] * inv_freq
  return jnp.stack([jnp.sin(angles_PxD2), jnp.cos(angles_PxD2)], axis=-1).reshape(keys + queries - 1, dim)


def rel_shift(scores_BxHxCxP: jax.Array, keys: int) -> jax.Array:
  """Transformer-XL's shift (its appendix B): out[..., i, j] = scores[..., i, C - 1 - i + j], (B, H, C, M).

  Column p of `scores` is relative position M - 1 - p (`relative_positions`) and query i is key M - C + i, so
  out[i, j] is the score for position (M - C + i) - j.
  """
  b, h, c, p = scores_BxHxCxP.shape
  padded_BxHxCxP1 = jnp.pad(scores_BxHxCxP, ((0, 0), (0, 0), (0, 0), (1, 0)))
  shifted_BxHxPxC = padded_BxHxCxP1.reshape(b, h, p + 1, c)[:, :, 1:]
  return shifted_BxHxPxC.reshape(b, h, c, p)[..., :keys]


def chunked_context(frames: int, chunk: int, left_chunks: int) -> jax.Array:
  """NeMo's `chunked_limited` attention (N, N): frame i sees frame j when j's chunk is i's or one of the
  `left_chunks` before it (chunks of `chunk` frames from frame 0)."""
  chunk_N = jnp.arange(frames) // chunk
  behind_NxN = chunk_N[:, None] - chunk_N[None, :]
  return (behind_NxN >= 0) & (behind_NxN <= left_chunks)


def conv2d(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int, dtype,
           rngs: nnx.Rngs, causal: bool = False) -> nnx.Conv:
  """torch `Conv2d(in, out, kernel, stride, padding=(kernel - 1) // 2, groups)` on (B, T, F, C); `causal` pads
  time by kernel - 1 on the left only."""
  pad = (kernel - 1) // 2
  time = (kernel - 1, 0) if causal else (pad, pad)
  return nnx.Conv(in_channels, out_channels, kernel_size=(kernel, kernel), strides=(stride, stride),
                  padding=(time, (pad, pad)), feature_group_count=groups, dtype=dtype, rngs=rngs,
                  kernel_init=nnx.with_partitioning(INIT, (None, None, None, "embed")),
                  bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)))


class Subsampling(nnx.Module):
  """Depthwise-separable conv subsampling over time and frequency by stride^`strided`, then a linear map to D.

  Conv 1 -> C and ReLU, then `strided` - 1 times a depthwise conv, a pointwise conv and ReLU; time frames at
  or past each row's valid length are zeroed after every conv. The mel input itself is not masked (as HF).
  `causal` convs see no later frame (NeMo's `causal_downsampling`).
  """

  def __init__(self, mels: int, channels: int, kernel: int, stride: int, strided: int, dim: int, dtype,
               rngs: nnx.Rngs, causal: bool = False):
    self.kernel, self.stride, self.strided = kernel, stride, strided
    self.first = conv2d(1, channels, kernel, stride, 1, dtype, rngs, causal)
    self.depthwise = nnx.List([conv2d(channels, channels, kernel, stride, channels, dtype, rngs, causal)
                               for _ in range(strided - 1)])
    self.pointwise = nnx.List([conv2d(channels, channels, 1, 1, 1, dtype, rngs) for _ in range(strided - 1)])
    freq = mels
    for _ in range(strided):
      freq = conv_length(freq, kernel, stride)
    self.out = layers.dense((freq, channels), dim, (None, None, "embed"), rngs=rngs, dtype=dtype)

  @property
  def receptive_field(self) -> int:
    """Earlier input frames a causal output frame reads, rounded up to whole output frames (in input frames)."""
    factor = self.stride ** self.strided
    return -(-(self.kernel - 1) * (factor - 1) // (self.stride - 1) // factor) * factor

  def __call__(self, mel_BxTxM: jax.Array, lengths_B: jax.Array, first=0) -> jax.Array:
    """(B, N, D) for N = the conv output length of T. Frame 0 of `mel_BxTxM` is the row's frame `first` (a
    multiple of the subsampling factor; negative in a stream's first window): frames before the row's frame 0,
    like those from `lengths_B` on, are zeroed after every conv, as padding would be."""
    def masked(x_BxNxFxC, first, lengths_B):
      frame_N = jnp.arange(x_BxNxFxC.shape[1]) + first
      valid_BxN = (frame_N >= 0) & (frame_N < lengths_B[:, None])
      return jnp.where(valid_BxN[:, :, None, None], x_BxNxFxC, 0)

    first, lengths_B = first // self.stride, conv_length(lengths_B, self.kernel, self.stride)
    x_BxNxFxC = jax.nn.relu(masked(self.first(mel_BxTxM[..., None]), first, lengths_B))
    for depthwise, pointwise in zip(self.depthwise, self.pointwise):
      first, lengths_B = first // self.stride, conv_length(lengths_B, self.kernel, self.stride)
      x_BxNxFxC = masked(depthwise(x_BxNxFxC), first, lengths_B)
      x_BxNxFxC = jax.nn.relu(masked(pointwise(x_BxNxFxC), first, lengths_B))
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

  def __call__(self, x_BxNxD: jax.Array, pos_PxD: jax.Array, pairs_BxNxN: jax.Array, deterministic: bool,
               key: jax.Array | None) -> jax.Array:
    """Self-attention; `pairs_BxNxN[b, i, j]`: query i may see key j. `pos_PxD`: `relative_positions(N, D)`."""
    q_BxNxHxK, k_BxNxHxK, v_BxNxHxK = self._project(x_BxNxD)
    return self._attend(q_BxNxHxK, k_BxNxHxK, v_BxNxHxK, pos_PxD, pairs_BxNxN, deterministic, key)

  def step(self, x_BxCxD: jax.Array, pos_PxD: jax.Array, pairs_BxCxM: jax.Array, past_k_BxLxHxK: jax.Array,
           past_v_BxLxHxK: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A chunk of C frames attending to the L cached frames' keys and values and its own (M = L + C keys);
    `pos_PxD`: `relative_positions(M, D, C)`. Returns the output and the cache of the last L keys and values."""
    q_BxCxHxK, k_BxCxHxK, v_BxCxHxK = self._project(x_BxCxD)
    k_BxMxHxK = jnp.concatenate([past_k_BxLxHxK, k_BxCxHxK], 1)
    v_BxMxHxK = jnp.concatenate([past_v_BxLxHxK, v_BxCxHxK], 1)
    out_BxCxD = self._attend(q_BxCxHxK, k_BxMxHxK, v_BxMxHxK, pos_PxD, pairs_BxCxM, True, None)
    cached = past_k_BxLxHxK.shape[1]
    return out_BxCxD, k_BxMxHxK[:, k_BxMxHxK.shape[1] - cached:], v_BxMxHxK[:, v_BxMxHxK.shape[1] - cached:]

  def _project(self, x_BxNxD):
    heads_axes = ("activation_batch", "activation_length", "activation_heads", "kv")
    return tuple(constrain(dense(x_BxNxD), heads_axes) for dense in (self.q, self.k, self.v))

  def _attend(self, q_BxCxHxK, k_BxMxHxK, v_BxMxHxK, pos_PxD, pairs_BxCxM, deterministic: bool, key):
    r_PxHxK = self.pos(pos_PxD)
    dtype = q_BxCxHxK.dtype
    content_BxHxCxM = jnp.einsum("bnhk,bmhk->bhnm", q_BxCxHxK + self.bias_u[...].astype(dtype), k_BxMxHxK,
                                 preferred_element_type=jnp.float32)
    position_BxHxCxP = jnp.einsum("bnhk,phk->bhnp", q_BxCxHxK + self.bias_v[...].astype(dtype), r_PxHxK,
                                  preferred_element_type=jnp.float32)
    scores_BxHxCxM = ((content_BxHxCxM + rel_shift(position_BxHxCxP, k_BxMxHxK.shape[1]))
                      * q_BxCxHxK.shape[-1] ** -0.5)
    scores_BxHxCxM = jnp.where(pairs_BxCxM[:, None], scores_BxHxCxM, jnp.finfo(jnp.float32).min)
    probs_BxHxCxM = self.dropout(jax.nn.softmax(scores_BxHxCxM, axis=-1), deterministic=deterministic, rngs=key)
    out_BxCxHxK = jnp.einsum("bhnm,bmhk->bnhk", probs_BxHxCxM.astype(dtype), v_BxMxHxK)
    return self.o(constrain(out_BxCxHxK, ("activation_batch", "activation_length", "activation_heads", "kv")))


class ConvModule(nnx.Module):
  """Pointwise conv to 2D channels, GLU, depthwise conv over time, BatchNorm, activation, pointwise conv.

  The pointwise convs are linear maps; the first keeps GLU's two halves (value, gate) on an axis of its own.
  BatchNorm normalises with the batch's statistics over every frame, padding included (as torch's
  BatchNorm1d), when not `deterministic`, and with the running ones otherwise. (flax updates the running
  variance with the biased batch variance, torch with the unbiased one: a factor frames / (frames - 1).)

  The depthwise conv is centred ('same', as HF) when `right` < 0; otherwise it reads kernel - 1 - `right`
  earlier frames and `right` later ones, but none past the end of the frame's chunk of `chunk` frames.
  """

  def __init__(self, dim: int, kernel: int, bias: bool, activation: str, dtype, rngs: nnx.Rngs, right: int = -1,
               chunk: int = 0):
    self.pointwise1 = layers.dense(dim, (2, dim), ("embed", None, "mlp"), rngs=rngs, dtype=dtype, use_bias=bias)
    self.depthwise = nnx.Param(INIT(rngs.params(), (kernel, 1, dim)), out_sharding=(None, None, "mlp"))
    self.depthwise_bias = nnx.Param(jnp.zeros((dim,)), out_sharding=("mlp",)) if bias else None
    self.norm = nnx.BatchNorm(dim, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs,
                              scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
                              bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)))
    self.pointwise2 = layers.dense(dim, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype, use_bias=bias)
    self.activation, self.right, self.chunk = activation, right, chunk

  @property
  def left(self) -> int:
    """Earlier frames the depthwise conv reads: the frames a stream caches."""
    kernel = self.depthwise.shape[0]
    return (kernel - 1) // 2 if self.right < 0 else kernel - 1 - self.right

  def __call__(self, x_BxNxD: jax.Array, mask_BxN: jax.Array, deterministic: bool) -> jax.Array:
    h_BxNxD = self._gated(x_BxNxD, mask_BxN)
    if self.right < 0:
      kernel = self.depthwise.shape[0]
      h_BxNxD = layers.conv1d(h_BxNxD, self.depthwise[...].astype(h_BxNxD.dtype),
                              padding=((kernel - 1) // 2, (kernel - 1) // 2), groups=h_BxNxD.shape[-1])
    else:
      past_BxLxD = jnp.zeros((h_BxNxD.shape[0], self.left, h_BxNxD.shape[2]), h_BxNxD.dtype)
      h_BxNxD = self._chunked_depthwise(past_BxLxD, h_BxNxD)
    return self._out(h_BxNxD, deterministic)

  def step(self, x_BxCxD: jax.Array, mask_BxC: jax.Array, past_BxLxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One chunk in inference, after the L cached gated frames; returns the output and the new cache."""
    h_BxCxD = self._gated(x_BxCxD, mask_BxC)
    seen_BxMxD = jnp.concatenate([past_BxLxD, h_BxCxD], 1)
    out_BxCxD = self._out(self._chunked_depthwise(past_BxLxD, h_BxCxD), True)
    return out_BxCxD, seen_BxMxD[:, seen_BxMxD.shape[1] - self.left:]

  def _gated(self, x_BxNxD, mask_BxN):
    h_BxNx2xD = self.pointwise1(x_BxNxD)
    h_BxNxD = h_BxNx2xD[:, :, 0] * jax.nn.sigmoid(h_BxNx2xD[:, :, 1])
    return constrain(jnp.where(mask_BxN[..., None], h_BxNxD, 0), MLP_AXES)

  def _chunked_depthwise(self, past_BxLxD, h_BxNxD):
    """Tap t of frame i reads frame i - left + t; a tap past the end of i's chunk reads zero. Frame 0 of
    `h_BxNxD` starts a chunk; `past_BxLxD` holds the frames before it."""
    n, left = h_BxNxD.shape[1], self.left
    padded_BxMxD = jnp.pad(jnp.concatenate([past_BxLxD, h_BxNxD], 1), ((0, 0), (0, self.right), (0, 0)))
    kernel_KxD = self.depthwise[...][:, 0].astype(h_BxNxD.dtype)
    in_chunk_N = jnp.arange(n) % self.chunk
    out_BxNxD = 0
    for t in range(kernel_KxD.shape[0]):
      tap_BxNxD = padded_BxMxD[:, t:t + n] * kernel_KxD[t]
      if t > left:
        tap_BxNxD = jnp.where((in_chunk_N + t - left < self.chunk)[:, None], tap_BxNxD, 0)
      out_BxNxD = out_BxNxD + tap_BxNxD
    return out_BxNxD

  def _out(self, h_BxNxD, deterministic: bool):
    if self.depthwise_bias is not None:
      h_BxNxD = h_BxNxD + self.depthwise_bias[...].astype(h_BxNxD.dtype)
    h_BxNxD = ACTIVATIONS[self.activation](self.norm(h_BxNxD, use_running_average=deterministic))
    return self.pointwise2(constrain(h_BxNxD, MLP_AXES))
