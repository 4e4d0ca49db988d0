"""The pieces of F5-TTS's DiT and E2-TTS's UNetT (f5_tts/model/modules.py), with its numerics and masking.

Norms, RoPE, the time embedding and the softmax run in float32 whatever the compute dtype; matmuls and
convolutions run in `dtype` (bf16 for training) on float32 params.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.nn import layers, splash
from jaxspeech.sharding import constrain, platform

BLOCK_AXES = ("activation_batch", "activation_length", "activation_embed")


def layer_norm(x, eps: float = 1e-6):
  """LayerNorm without scale or bias (F5's `elementwise_affine=False`), in float32."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def sinusoid(t_B, dim: int, scale: float = 1000.0):
  """F5's SinusPositionEmbedding: [sin, cos] of scale·t·10000^(−i/(dim/2 − 1)), i < dim/2."""
  half = dim // 2
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000) / (half - 1)))
  arg_BxH = scale * t_B.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(arg_BxH), jnp.cos(arg_BxH)], -1)


def text_positions(n: int, dim: int, max_pos: int | None = None) -> np.ndarray:
  """F5's `precompute_freqs_cis` rows 0..n−1 (row max_pos−1 repeated past max_pos): [cos(p·f), sin(p·f)]."""
  freqs = 1.0 / 10000.0 ** (np.arange(0, dim, 2)[:dim // 2].astype(np.float32) / dim)
  pos = np.arange(n) if max_pos is None else np.minimum(np.arange(n), max_pos - 1)
  angles = np.outer(pos, freqs).astype(np.float32)
  return np.concatenate([np.cos(angles), np.sin(angles)], -1)


def rope_angles(n: int, dim_head: int) -> np.ndarray:
  """x-transformers' RotaryEmbedding angles (n, dim_head): p·θ_j for interleaved pairs (2j, 2j+1)."""
  return np.repeat(np.outer(np.arange(n, dtype=np.float32), layers.rope_inv_freq(dim_head, 10000.0)), 2, axis=-1)


def _rotate_half(dim_head: int) -> np.ndarray:
  """(K, K): x @ it is x-transformers' interleaved rotate_half, (x0, x1) → (−x1, x0)."""
  r = np.zeros((dim_head, dim_head), np.float32)
  r[1::2, ::2] -= np.eye(dim_head // 2, dtype=np.float32)
  r[::2, 1::2] += np.eye(dim_head // 2, dtype=np.float32)
  return r


def apply_rope(x_BxLxHxK, angles_LxK):
  """x·cos + rotate_half(x)·sin in float32, over x-transformers' interleaved pairs (`layers.apply_rope` pairs
  halves, as HF's Llama). The pairs are swapped by a signed-permutation matmul (exact; ~1% of
  a block's FLOPs): on TPU a (K/2, 2) reshape of the head dim is not lane-dense, and its float32 copies cost 9%
  of a DiT base step's estimated time (benchmarks/RESULTS.md)."""
  rotated = jnp.einsum("blhk,kj->blhj", x_BxLxHxK, _rotate_half(x_BxLxHxK.shape[-1]).astype(x_BxLxHxK.dtype),
                       precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  cos, sin = jnp.cos(angles_LxK)[:, None], jnp.sin(angles_LxK)[:, None]
  return (x_BxLxHxK.astype(jnp.float32) * cos + rotated * sin).astype(x_BxLxHxK.dtype)


def conv1d(channels: int, kernel: int, groups: int, dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """A 'same' Conv1d over (B, L, C), channels split in `groups`. Its kernel is replicated: sharding the channels of
  a grouped conv makes XLA's partitioner regather batch-sharded activations."""
  return nnx.Conv(channels, channels, kernel_size=(kernel,), padding=kernel // 2, feature_group_count=groups,
                  dtype=dtype, rngs=rngs,
                  kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, None)),
                  bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (None,)))


def _same_conv(x_BxLxI, kernel_KxIgxO, groups: int):
  pad = kernel_KxIgxO.shape[0] // 2
  return layers.conv1d(x_BxLxI, kernel_KxIgxO, padding=(pad, pad), groups=groups)


def grouped_conv1d(x_BxLxI, kernel_KxIgxO, groups: int):
  """A 'same' grouped Conv1d (odd kernel (K, I/groups, O)); on CPU with `grouped_conv1d_taps`'s kernel gradient,
  elsewhere XLA's convolution and its autodiff."""
  if platform() == "cpu":
    return grouped_conv1d_taps(x_BxLxI, kernel_KxIgxO, groups)
  return _same_conv(x_BxLxI, kernel_KxIgxO, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def grouped_conv1d_taps(x_BxLxI, kernel_KxIgxO, groups: int):
  """`_same_conv` whose kernel gradient is a sum over the K taps of per-group products: XLA:CPU's own took
  87 ms for F5's k31 / 16-group conv at (8, 376, 128), the taps 10 ms (the forward and the input gradient stay
  XLA's convolutions, ~5 ms each). A CPU trick: other compilers get the plain convolution."""
  return _same_conv(x_BxLxI, kernel_KxIgxO, groups)


def _grouped_conv1d_fwd(x_BxLxI, kernel_KxIgxO, groups):
  return _same_conv(x_BxLxI, kernel_KxIgxO, groups), (x_BxLxI, kernel_KxIgxO)


def _grouped_conv1d_bwd(groups, res, dy_BxLxO):
  x_BxLxI, kernel_KxIgxO = res
  (dx_BxLxI,) = jax.vjp(lambda x: _same_conv(x, kernel_KxIgxO, groups), x_BxLxI)[1](dy_BxLxO)
  (k, ig, o), (b, length, _) = kernel_KxIgxO.shape, x_BxLxI.shape
  x_BxPxGxIg = jnp.pad(x_BxLxI, ((0, 0), (k // 2, k // 2), (0, 0))).reshape(b, length + k - 1, groups, ig)
  dy_BxLxGxOg = dy_BxLxO.reshape(b, length, groups, o // groups)
  dk_KxIgxGxOg = jnp.stack([jnp.einsum("blgi,blgo->igo", x_BxPxGxIg[:, tap:tap + length], dy_BxLxGxOg,
                                       preferred_element_type=jnp.float32) for tap in range(k)])
  return dx_BxLxI, dk_KxIgxGxOg.reshape(k, ig, o).astype(kernel_KxIgxO.dtype)


grouped_conv1d_taps.defvjp(_grouped_conv1d_fwd, _grouped_conv1d_bwd)


class TimestepEmbedding(nnx.Module):
  """Sinusoid(256, scale 1000) → Linear → SiLU → Linear."""

  def __init__(self, dim: int, rngs: nnx.Rngs, freq_dim: int = 256):
    self.freq_dim = freq_dim
    self.fc1 = layers.dense(freq_dim, dim, (None, "mlp"), rngs=rngs)
    self.fc2 = layers.dense(dim, dim, ("mlp", "embed"), rngs=rngs)

  def __call__(self, t_B):
    return self.fc2(jax.nn.silu(self.fc1(sinusoid(t_B, self.freq_dim))))


class ConvNeXtV2Block(nnx.Module):
  """Depthwise conv k7 → LN(1e-6) → Linear → GELU (erf) → GRN → Linear, residual."""

  def __init__(self, dim: int, hidden: int, dtype, rngs: nnx.Rngs):
    self.dwconv = conv1d(dim, 7, dim, dtype, rngs)
    self.norm = layers.layer_norm(dim, epsilon=1e-6, dtype=jnp.float32, rngs=rngs)
    self.pwconv1 = layers.dense(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.grn_gamma = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",))(rngs.params(), (hidden,)))
    self.grn_beta = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",))(rngs.params(), (hidden,)))
    self.pwconv2 = layers.dense(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def grn(self, x_BxLxH):
    """Global response normalisation; F5 takes the L2 norm over the sequence axis (padding included)."""
    x = x_BxLxH.astype(jnp.float32)
    g_Bx1xH = jnp.sqrt(jnp.sum(jnp.square(x), axis=1, keepdims=True))
    n_Bx1xH = g_Bx1xH / (g_Bx1xH.mean(-1, keepdims=True) + 1e-6)
    return (self.grn_gamma[...] * (x * n_Bx1xH) + self.grn_beta[...] + x).astype(x_BxLxH.dtype)

  def depthwise(self, x_BxLxD):
    """The k7 depthwise conv; on CPU as one multiply-add per tap (XLA:CPU's depthwise convolution took 7 ms
    forward and backward here against < 1 ms), with the nnx.Conv's params (kernel (7, 1, D), bias)."""
    if platform() != "cpu":
      return self.dwconv(x_BxLxD)
    k, length = self.dwconv.kernel.shape[0], x_BxLxD.shape[1]
    dtype = self.dwconv.dtype
    x_BxPxD = jnp.pad(x_BxLxD.astype(dtype), ((0, 0), (k // 2, k // 2), (0, 0)))
    kernel_KxD = self.dwconv.kernel[...][:, 0].astype(dtype)
    return sum(x_BxPxD[:, tap:tap + length] * kernel_KxD[tap] for tap in range(k)) + self.dwconv.bias[...].astype(dtype)

  def __call__(self, x_BxLxD):
    h = self.norm(self.depthwise(x_BxLxD)).astype(x_BxLxD.dtype)
    h = self.grn(jax.nn.gelu(self.pwconv1(h), approximate=False))
    return x_BxLxD + self.pwconv2(h)


class TextEmbedding(nnx.Module):
  """Characters (−1 = padding) shifted by one (0 = filler), cut or padded to the mel length, embedded, plus
  sinusoidal positions and ConvNeXt-V2 blocks, filler positions zeroed around each block (`mask_padding`).

  `per_example_length` is the DiT's handling of a padded batch: tokens, embeddings and positions past each
  example's valid length are zero. The UNetT has neither, and clamps positions at 4096 (the DiT at 8192).
  """

  def __init__(self, num_embeds: int, dim: int, conv_layers: int, mask_padding: bool, per_example_length: bool,
               dtype, rngs: nnx.Rngs):
    self.dim, self.mask_padding, self.per_example_length = dim, mask_padding, per_example_length
    self.max_pos = 8192 if per_example_length else 4096
    # Replicated (≈ 1.3M params in base): a gather from a sharded table regathers the batch-sharded output.
    self.embed = nnx.Embed(num_embeds + 1, dim, dtype=dtype, rngs=rngs,
                           embedding_init=nnx.with_partitioning(nnx.initializers.normal(1.0), (None, None)))
    self.blocks = nnx.List([ConvNeXtV2Block(dim, 2 * dim, dtype, rngs) for _ in range(conv_layers)])

  def __call__(self, text_BxNt, valid_BxL, drop_text_B):
    n = valid_BxL.shape[1]
    text_BxL = text_BxNt[:, :n] + 1
    text_BxL = jnp.pad(text_BxL, ((0, 0), (0, n - text_BxL.shape[1])))
    if self.per_example_length:
      text_BxL = jnp.where(valid_BxL, text_BxL, 0)
    keep_BxLx1 = (text_BxL != 0)[..., None] if self.mask_padding else None
    text_BxL = jnp.where(drop_text_B[:, None], 0, text_BxL)
    x_BxLxD = constrain(self.embed(text_BxL), BLOCK_AXES)
    if not self.blocks:
      return x_BxLxD
    pos_LxD = jnp.asarray(text_positions(n, self.dim, self.max_pos))
    if self.per_example_length:
      x_BxLxD = jnp.where(valid_BxL[..., None], x_BxLxD, 0) + pos_LxD * valid_BxL[..., None]
    else:
      x_BxLxD = x_BxLxD + pos_LxD
    x_BxLxD = x_BxLxD.astype(self.embed.dtype)
    for block in self.blocks:
      x_BxLxD = block(x_BxLxD if keep_BxLx1 is None else jnp.where(keep_BxLx1, x_BxLxD, 0))
    return x_BxLxD if keep_BxLx1 is None else jnp.where(keep_BxLx1, x_BxLxD, 0)


class InputEmbedding(nnx.Module):
  """Linear over [noisy mel, cond mel, text], plus a residual ConvPositionEmbedding (2 × (Conv1d k31 g16, Mish));
  `masked` (the DiT) zeroes padded frames around each conv."""

  def __init__(self, mel_dim: int, text_dim: int, dim: int, masked: bool, dtype, rngs: nnx.Rngs):
    self.masked = masked
    self.proj = layers.dense(2 * mel_dim + text_dim, dim, (None, "embed"), dtype=dtype, rngs=rngs)
    self.conv1 = conv1d(dim, 31, 16, dtype, rngs)
    self.conv2 = conv1d(dim, 31, 16, dtype, rngs)

  def __call__(self, x_BxLxM, cond_BxLxM, text_BxLxT, valid_BxL, drop_audio_B):
    cond_BxLxM = jnp.where(drop_audio_B[:, None, None], 0, cond_BxLxM)
    dtype = self.proj.dtype
    x_BxLxD = self.proj(jnp.concatenate([x_BxLxM.astype(dtype), cond_BxLxM.astype(dtype),
                                         text_BxLxT.astype(dtype)], -1))
    keep_BxLx1 = valid_BxL[..., None]
    h_BxLxD = jnp.where(keep_BxLx1, x_BxLxD, 0) if self.masked else x_BxLxD
    for conv in (self.conv1, self.conv2):
      kernel_KxIgxD = conv.kernel[...].astype(conv.dtype)
      h_BxLxD = grouped_conv1d(h_BxLxD.astype(conv.dtype), kernel_KxIgxD, conv.feature_group_count)
      h_BxLxD = h_BxLxD + conv.bias[...].astype(conv.dtype)
      if self.masked:
        h_BxLxD = jnp.where(keep_BxLx1, h_BxLxD, 0)
      h_BxLxD = jax.nn.mish(h_BxLxD)
    return h_BxLxD + x_BxLxD


class Attention(nnx.Module):
  """Multi-head self-attention with biases and RoPE on the first `rope_heads` heads (0 = all).

  `key_mask` masks padded keys (F5's `attn_mask_enabled`; off in its released models); padded query rows
  of the output are zero either way. On GPUs in bf16/fp16 cuDNN's fused kernel runs it
  (`jax.nn.dot_product_attention`), on TPUs the Pallas splash kernel (`nn/splash.py`), elsewhere
  `layers.dot_product_attention` (FlashAttention's backward; blocks
  of batch rows with ≤ `block_bytes` of logits each when > 0); logits and softmax are float32 in both.
  """

  def __init__(self, dim: int, heads: int, dim_head: int, rope_heads: int, key_mask: bool, dtype, rngs: nnx.Rngs,
               block_bytes: int = 0):
    self.rope_heads, self.key_mask, self.block_bytes = rope_heads or heads, key_mask, block_bytes
    for name in ("query", "key", "value"):
      setattr(self, name, layers.dense(dim, (heads, dim_head), ("embed", "heads", "kv"), dtype=dtype, rngs=rngs))
    self.out = layers.dense((heads, dim_head), dim, ("heads", "kv", "embed"), dtype=dtype, rngs=rngs)

  def rotate(self, x_BxLxHxK, angles_LxK):
    p = self.rope_heads
    if p == x_BxLxHxK.shape[2]:
      return apply_rope(x_BxLxHxK, angles_LxK)
    return jnp.concatenate([apply_rope(x_BxLxHxK[:, :, :p], angles_LxK), x_BxLxHxK[:, :, p:]], axis=2)

  def __call__(self, x_BxLxD, valid_BxL, angles_LxK):
    q = self.rotate(self.query(x_BxLxD), angles_LxK)
    k = self.rotate(self.key(x_BxLxD), angles_LxK)
    v = self.value(x_BxLxD)
    implementation = attention_implementation(q, k)
    if implementation == "cudnn":
      # valid_BxL is a prefix of each row, so lengths describe it (the form cuDNN's padding mask takes)
      lengths_B = valid_BxL.sum(-1, dtype=jnp.int32) if self.key_mask else None
      y_BxLxHxK = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths_B, implementation="cudnn")
    elif implementation == "splash":
      # valid queries see the valid keys alone, as with the key mask; padded query rows are zeroed below
      segments_BxL = valid_BxL.astype(jnp.int32) if self.key_mask else jnp.ones(valid_BxL.shape, jnp.int32)
      y_BxLxHxK = splash.attention(q, k, v, segments_BxL, causal=False)
    else:
      mask_Bx1x1xL = valid_BxL[:, None, None, :] if self.key_mask else None
      y_BxLxHxK = layers.dot_product_attention(q, k, v, mask_Bx1x1xL, block_bytes=self.block_bytes)
    return jnp.where(valid_BxL[..., None], self.out(y_BxLxHxK), 0)


def attention_implementation(q_BxLxHxK, k_BxLxHxK) -> str:
  """cuDNN's fused attention on GPUs for bf16/fp16 (it has no float32 kernel), Pallas splash attention on TPUs,
  XLA's otherwise."""
  if platform() == "gpu" and jnp.dtype(q_BxLxHxK.dtype).itemsize == 2:
    return "cudnn"
  return "splash" if layers.use_splash(q_BxLxHxK, k_BxLxHxK) else "xla"


class FeedForward(nnx.Module):
  """Linear → tanh-GELU → Linear."""

  def __init__(self, dim: int, mult: int, dtype, rngs: nnx.Rngs):
    self.fc1 = layers.dense(dim, dim * mult, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = layers.dense(dim * mult, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x_BxLxD):
    return self.fc2(jax.nn.gelu(self.fc1(x_BxLxD), approximate=True))


class RMSNorm(nnx.Module):
  """x-transformers' RMSNorm: x / max(‖x‖, 1e-12) · √D · g, in float32 (no ε inside the root, unlike
  `layers.rms_norm`)."""

  def __init__(self, dim: int, rngs: nnx.Rngs):
    self.scale = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",))(rngs.params(), (dim,)))

  def __call__(self, x_BxLxD):
    x = x_BxLxD.astype(jnp.float32)
    norm = jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x), -1, keepdims=True)), 1e-12)
    return (x / norm * math.sqrt(x.shape[-1]) * self.scale[...]).astype(x_BxLxD.dtype)
