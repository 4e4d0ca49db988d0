"""X-codec2's acoustic encoder (BigCodec's `CodecEncoder_Transformer` without its unused transformer).

    WNConv1d(1 → C, k7) → [EncoderBlock(stride s): residual units at dilations, SnakeBeta, WNConv1d(k 2s,
    stride s) doubling the channels] for each stride → SnakeBeta → WNConv1d(→ dim, k3)

Every SnakeBeta is anti-aliased (alias-free-torch's `Activation1d`): upsample ×2 with a Kaiser-windowed
sinc, SnakeBeta at twice the rate, low-pass and decimate ×2. Hop = the product of the strides.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.nn.conv import Conv1d
from jaxspeech.nn.layers import conv1d
from jaxspeech.sharding import constrain, platform

BLOCK_AXES = ("activation_batch", "activation_length", "activation_embed")
RATIO, TAPS = 2, 12   # alias-free-torch's Activation1d defaults, as xcodec2 uses them


def kaiser_sinc_filter(cutoff: float, half_width: float, taps: int) -> np.ndarray:
  """alias-free-torch's `kaiser_sinc_filter1d` for an even number of taps: a unit-sum low-pass, float32."""
  half = taps // 2
  attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95   # Kaiser's formula, in dB
  if attenuation > 50:
    beta = 0.1102 * (attenuation - 8.7)
  elif attenuation >= 21:
    beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21)
  else:
    beta = 0.0
  time = np.arange(-half, half, dtype=np.float32) + 0.5
  response = 2 * cutoff * np.kaiser(taps, beta).astype(np.float32) * np.sinc(2 * cutoff * time).astype(np.float32)
  return (response / response.sum()).astype(np.float32)


# The one filter both resamplers use at ratio 2: cutoff 0.5 / ratio, transition half-width 0.6 / ratio.
LOWPASS = kaiser_sinc_filter(0.5 / RATIO, 0.6 / RATIO, TAPS)
# The upsampler as a transposed conv: out[n] = Σ_m x[m] h[n − R·m] at n = R·i + s + trim, over the input edge-
# padded by PAD; phase s reads padded x[i + offset_s − j] with tap h[R·j + r_s], (offset_s, r_s) = PHASES[s].
PAD = TAPS // RATIO - 1
PHASES = [divmod(s + PAD * RATIO + (TAPS - RATIO) // 2, RATIO) for s in range(RATIO)]


def _phase_kernel() -> tuple[int, np.ndarray]:
  """(first padded input read, (W, R) kernel): every phase as one output of a W-tap convolution."""
  first = PHASES[0][0] - PAD
  kernel_WxR = np.zeros((PHASES[-1][0] - first + 1, RATIO), np.float32)
  for s, (offset, r) in enumerate(PHASES):
    for j in range(TAPS // RATIO):
      kernel_WxR[offset - j - first, s] = LOWPASS[RATIO * j + r]
  return first, kernel_WxR


UP_FIRST, UP_KERNEL = _phase_kernel()


def upsample(x_BxLxC: jax.Array) -> jax.Array:
  """alias-free-torch's `UpSample1d(2, 12)` (edge-pad, zero-stuff, low-pass with gain 2, trim) → (B, 2L, C).

  Polyphase: output sample R·i + s only meets every R-th tap. Traced for the CPU it is shifted sums of the input,
  which fuse into one elementwise loop (a depthwise input-dilated convolution ran 31× slower on XLA:CPU); for
  TPU and GPU it is one depthwise convolution with both phases as outputs, which compiles far faster than the
  sums' dozens of slices per activation (benchmarks/RESULTS.md).
  """
  b, length, c = x_BxLxC.shape
  x_BxPxC = jnp.pad(x_BxLxC, ((0, 0), (PAD, PAD), (0, 0)), mode="edge")
  if platform() == "cpu":
    out_BxLxRxC = jnp.stack([sum(float(LOWPASS[RATIO * j + r]) * x_BxPxC[:, offset - j:offset - j + length]
                                 for j in range(TAPS // RATIO)) for offset, r in PHASES], axis=2)
  else:
    kernel_Wx1xCR = jnp.asarray(np.tile(UP_KERNEL, (1, c))[:, None], x_BxPxC.dtype)
    window = x_BxPxC[:, UP_FIRST:UP_FIRST + length + len(UP_KERNEL) - 1]
    out_BxLxRxC = conv1d(window, kernel_Wx1xCR, groups=c).reshape(b, length, c, RATIO).swapaxes(2, 3)
  return RATIO * out_BxLxRxC.reshape(b, RATIO * length, c)


def downsample(x_BxLxC: jax.Array) -> jax.Array:
  """alias-free-torch's `DownSample1d(2, 12)`: edge-pad (5, 6), low-pass, keep every second sample.

  Shifted sums on the CPU (the strided depthwise convolution ran 19× slower on XLA:CPU), a convolution elsewhere.
  """
  b, length, c = x_BxLxC.shape
  out = -(-length // RATIO)
  x_BxPxC = jnp.pad(x_BxLxC, ((0, 0), (TAPS // 2 - 1, TAPS // 2), (0, 0)), mode="edge")
  if platform() == "cpu":
    return sum(float(LOWPASS[k]) * x_BxPxC[:, k:k + RATIO * (out - 1) + 1:RATIO] for k in range(TAPS))
  kernel_Kx1xC = jnp.asarray(np.tile(LOWPASS[:, None, None], (1, 1, c)), x_BxPxC.dtype)
  return conv1d(x_BxPxC, kernel_Kx1xC, stride=RATIO, groups=c)


class SnakeBeta(nnx.Module):
  """x + sin²(e^α · x) / (e^β + 1e-9) per channel (log-scale α, β; BigVGAN), anti-aliased; float32 out."""

  def __init__(self, channels: int):
    self.alpha = nnx.Param(jnp.zeros((channels,)), out_sharding=("embed",))
    self.beta = nnx.Param(jnp.zeros((channels,)), out_sharding=("embed",))

  def __call__(self, x_BxLxC: jax.Array) -> jax.Array:
    x_Bx2LxC = upsample(x_BxLxC)
    alpha, beta = jnp.exp(self.alpha[...]), jnp.exp(self.beta[...])
    return downsample(x_Bx2LxC + jnp.sin(x_Bx2LxC * alpha) ** 2 / (beta + 1e-9))


class ResidualUnit(nnx.Module):
  def __init__(self, channels: int, dilation: int, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.act1 = SnakeBeta(channels)
    self.conv1 = Conv1d(channels, channels, 7, dilation=dilation, weight_norm=True, dtype=dtype, rngs=rngs)
    self.act2 = SnakeBeta(channels)
    self.conv2 = Conv1d(channels, channels, 1, weight_norm=True, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxLxC: jax.Array) -> jax.Array:
    return x_BxLxC + self.conv2(self.act2(self.conv1(self.act1(x_BxLxC))))


class EncoderBlock(nnx.Module):
  """Residual units at `channels // 2`, then a strided conv to `channels` (L → L / stride)."""

  def __init__(self, channels: int, stride: int, dilations, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.units = nnx.List([ResidualUnit(channels // 2, d, dtype, rngs) for d in dilations])
    self.act = SnakeBeta(channels // 2)
    self.conv = Conv1d(channels // 2, channels, 2 * stride, stride=stride, padding=stride // 2 + stride % 2,
                       weight_norm=True, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxLxC: jax.Array) -> jax.Array:
    for unit in self.units:
      x_BxLxC = unit(x_BxLxC)
    return constrain(self.conv(self.act(x_BxLxC)), BLOCK_AXES)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Defaults: X-codec2's encoder (hop 320 = prod(strides))."""
  channels: int = 48
  strides: tuple[int, ...] = (2, 2, 4, 4, 5)
  dilations: tuple[int, ...] = (1, 3, 9)
  dim: int = 1024

  def __post_init__(self):
    object.__setattr__(self, "strides", tuple(self.strides))
    object.__setattr__(self, "dilations", tuple(self.dilations))


class Encoder(nnx.Module):
  """wav (B, S) → latents (B, S / hop, dim); S must be a multiple of hop = prod(strides)."""

  def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
    channels = cfg.channels
    self.conv_in = Conv1d(1, channels, 7, weight_norm=True, dtype=dtype, rngs=rngs)
    blocks = []
    for stride in cfg.strides:
      channels *= 2
      blocks.append(EncoderBlock(channels, stride, cfg.dilations, dtype, rngs))
    self.blocks = nnx.List(blocks)
    self.act = SnakeBeta(channels)
    self.conv_out = Conv1d(channels, cfg.dim, 3, weight_norm=True, dtype=dtype, rngs=rngs)

  def __call__(self, wav_BxS: jax.Array) -> jax.Array:
    x_BxLxC = self.conv_in(wav_BxS[..., None])
    for block in self.blocks:
      x_BxLxC = block(x_BxLxC)
    return constrain(self.conv_out(self.act(x_BxLxC)), BLOCK_AXES)
