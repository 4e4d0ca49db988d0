"""Vocos-style decoder of X-codec2 (`CodecDecoderVocos` backbone and head): features → waveform.

    Conv1d(k7) → 2 ResnetBlocks → L TransformerBlocks → 2 ResnetBlocks → LayerNorm → Linear(n_fft + 2)
    → log-magnitude and phase → ISTFT ("same" padding): (B, N, C) → (B, N · hop)

The transformer blocks are pre-RMSNorm with bias-free fused attention (`c_attn`, `c_proj`) and a 4× SiLU MLP.
xcodec2 passes (B, H, T, K) tensors to torchtune's RoPE, which reads them as (B, T, H, K): it rotates each
head by its head index, identically for q and k at every time step, which leaves q·k unchanged. The
released model therefore has no positional encoding in attention, and neither has this one.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspeech.audio.istft import istft_same
from jaxspeech.nn.conv import Conv1d
from jaxspeech.nn import layers
from jaxspeech.sharding import constrain

BLOCK_AXES = ("activation_batch", "activation_length", "activation_embed")


def group_norm(channels: int, groups: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.GroupNorm:
  return nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-6, dtype=dtype, rngs=rngs,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)))


class ResnetBlock(nnx.Module):
  """x + conv2(swish(GN(conv1(swish(GN(x)))))), k3 convs (the LDM/VQGAN block, no time embedding)."""

  def __init__(self, channels: int, groups: int, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.norm1 = group_norm(channels, groups, dtype, rngs)
    self.conv1 = Conv1d(channels, channels, 3, dtype=dtype, rngs=rngs)
    self.norm2 = group_norm(channels, groups, dtype, rngs)
    self.conv2 = Conv1d(channels, channels, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxNxC: jax.Array) -> jax.Array:
    h_BxNxC = self.conv1(jax.nn.swish(self.norm1(x_BxNxC)))
    h_BxNxC = self.conv2(jax.nn.swish(self.norm2(h_BxNxC)))
    return constrain(x_BxNxC + h_BxNxC, BLOCK_AXES)


class TransformerBlock(nnx.Module):
  def __init__(self, dim: int, heads: int, dtype: jnp.dtype, rngs: nnx.Rngs):
    k, kw = dim // heads, dict(use_bias=False, dtype=dtype, rngs=rngs)
    self.att_norm = layers.rms_norm(dim, dtype=dtype, rngs=rngs)
    self.c_attn = layers.dense(dim, (3, heads, k), ("embed", None, "heads", "kv"), **kw)
    self.c_proj = layers.dense((heads, k), dim, ("heads", "kv", "embed"), **kw)
    self.ffn_norm = layers.rms_norm(dim, dtype=dtype, rngs=rngs)
    self.fc1 = layers.dense(dim, 4 * dim, ("embed", "mlp"), **kw)
    self.fc2 = layers.dense(4 * dim, dim, ("mlp", "embed"), **kw)

  def __call__(self, x_BxNxD: jax.Array) -> jax.Array:
    qkv_BxNx3xHxK = self.c_attn(self.att_norm(x_BxNxD))
    q, k, v = (qkv_BxNx3xHxK[:, :, i] for i in range(3))
    x_BxNxD = x_BxNxD + self.c_proj(layers.dot_product_attention(q, k, v))
    x_BxNxD = x_BxNxD + self.fc2(jax.nn.silu(self.fc1(self.ffn_norm(x_BxNxD))))
    return constrain(x_BxNxD, BLOCK_AXES)


class ISTFTHead(nnx.Module):
  """Linear → (log-magnitude, phase) of n_fft // 2 + 1 bins per frame → ISTFT: (B, N, D) → (B, N · hop)."""

  def __init__(self, dim: int, n_fft: int, hop: int, rngs: nnx.Rngs):
    self.n_fft, self.hop = n_fft, hop
    self.out = layers.dense(dim, n_fft + 2, ("embed", None), rngs=rngs)

  def __call__(self, x_BxNxD: jax.Array) -> jax.Array:
    log_mag_BxNxF, phase_BxNxF = jnp.split(self.out(x_BxNxD).astype(jnp.float32), 2, axis=-1)
    mag_BxNxF = jnp.minimum(jnp.exp(log_mag_BxNxF), 1e2)   # Vocos' guard against huge magnitudes
    return istft_same(mag_BxNxF * jnp.exp(1j * phase_BxNxF), self.n_fft, self.hop)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Defaults: X-codec2's decoder (16 kHz, hop 320)."""
  input_channels: int = 1024
  dim: int = 1024
  depth: int = 12
  heads: int = 16
  n_fft: int = 1280
  hop: int = 320
  norm_groups: int = 32


class VocosDecoder(nnx.Module):
  """(B, N, input_channels) → wav (B, N · hop). The backbone computes in `dtype` (params float32); the ISTFT head
  in float32."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
    self.embed = Conv1d(cfg.input_channels, cfg.dim, 7, dtype=dtype, rngs=rngs)
    self.prior_net = nnx.List([ResnetBlock(cfg.dim, cfg.norm_groups, dtype, rngs) for _ in range(2)])
    self.transformers = nnx.List([TransformerBlock(cfg.dim, cfg.heads, dtype, rngs) for _ in range(cfg.depth)])
    self.post_net = nnx.List([ResnetBlock(cfg.dim, cfg.norm_groups, dtype, rngs) for _ in range(2)])
    self.final_norm = layers.layer_norm(cfg.dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.head = ISTFTHead(cfg.dim, cfg.n_fft, cfg.hop, rngs)

  def __call__(self, x_BxNxC: jax.Array) -> jax.Array:
    x_BxNxD = constrain(self.embed(x_BxNxC), BLOCK_AXES)
    for block in (*self.prior_net, *self.transformers, *self.post_net):
      x_BxNxD = block(x_BxNxD)
    return self.head(self.final_norm(x_BxNxD))
