"""GAN discriminators for the codec and the vocoder, as Vocos (0.1.0) builds them, channel-last.

- `MultiPeriodDiscriminator` (HiFi-GAN): the wave folded into (S / p, p) for each period p, then 2-D convs
  with (k, 1) kernels, so each of the p phases is judged on its own.
- `MultiResolutionDiscriminator` (DAC's): the real and imaginary parts of an STFT at each window, split into
  five frequency bands, each band through its own conv stack, the bands concatenated for the last conv.

Each returns (logits, feature maps): a list with one logits array per sub-discriminator, and a list per
sub-discriminator of its activations (B, H, W, C) after every conv but the first (the last being the logits).
Convs are weight-normalised (torch's `weight_norm(dim=0)`: `weight_v` and the per-output gain `weight_g`).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

import jaxspeech.nn  # noqa: F401  (turns flax's eager sharding off before any param is made)
from jaxspeech.audio import features
from jaxspeech.audio.istft import hann_window
from jaxspeech.nn.conv import WN_INIT
from jaxspeech.sharding import platform

LRELU_SLOPE = 0.1
MPD_CHANNELS = (32, 128, 512, 1024, 1024)
# DAC's bands, as fractions of the n_fft // 2 + 1 bins.
BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
INIT = WN_INIT  # torch's default Conv init, which its weight-normed convs keep

Outputs = tuple[list[jax.Array], list[list[jax.Array]]]


class Conv2d(nnx.Module):
  """A weight-normalised torch `Conv2d` on (B, H, W, C); `weight_v` is (KH, KW, I, O), `weight_g` is (O,)."""

  def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int], *, rngs: nnx.Rngs,
               stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0)):
    self.stride, self.padding = stride, padding
    v_HxWxIxO = INIT(rngs.params(), (*kernel, in_channels, out_channels))
    self.weight_v = nnx.Param(v_HxWxIxO, out_sharding=(None, None, None, "embed"))
    self.weight_g = nnx.Param(jnp.sqrt(jnp.sum(v_HxWxIxO ** 2, axis=(0, 1, 2))), out_sharding=("embed",))
    self.bias = nnx.Param(jnp.zeros((out_channels,)), out_sharding=("embed",))

  def kernel(self) -> jax.Array:
    v_HxWxIxO = self.weight_v[...]
    return v_HxWxIxO * (self.weight_g[...] / jnp.sqrt(jnp.sum(v_HxWxIxO ** 2, axis=(0, 1, 2))))

  def apply(self, x_BxHxWxI: jax.Array, kernel_HxWxIxO: jax.Array, bias_O: jax.Array) -> jax.Array:
    """This conv's stride and padding with the given weights."""
    y_BxHxWxO = jax.lax.conv_general_dilated(
        x_BxHxWxI, kernel_HxWxIxO.astype(x_BxHxWxI.dtype), self.stride, [(p, p) for p in self.padding],
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y_BxHxWxO + bias_O

  def out_width(self, width: int) -> int:
    return (width + 2 * self.padding[1] - self.weight_v.shape[1]) // self.stride[1] + 1

  def __call__(self, x_BxHxWxI: jax.Array) -> jax.Array:
    return self.apply(x_BxHxWxI, self.kernel(), self.bias[...])


def _leaky_stack(convs, x_BxHxWxC: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
  """Leaky-ReLU'd convs: (the output, every activation after the first conv's)."""
  fmaps = []
  for i, conv in enumerate(convs):
    x_BxHxWxC = jax.nn.leaky_relu(conv(x_BxHxWxC), LRELU_SLOPE)
    if i > 0:
      fmaps.append(x_BxHxWxC)
  return x_BxHxWxC, fmaps


class PeriodDiscriminator(nnx.Module):
  def __init__(self, period: int, channels: Sequence[int], rngs: nnx.Rngs, kernel: int = 5, stride: int = 3):
    self.period = period
    ins, pad = (1, *channels[:-1]), (kernel // 2, 0)
    self.convs = nnx.List([Conv2d(i, o, (kernel, 1), stride=(stride if n < len(channels) - 1 else 1, 1),
                                  padding=pad, rngs=rngs)
                           for n, (i, o) in enumerate(zip(ins, channels))])
    self.conv_post = Conv2d(channels[-1], 1, (3, 1), padding=(1, 0), rngs=rngs)

  def __call__(self, wav_BxS: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """Logits (B, H · period), h-major, as torch flattens its (B, 1, H, period) output."""
    p = self.period
    wav_BxS = jnp.pad(wav_BxS, ((0, 0), (0, -wav_BxS.shape[1] % p)), mode="reflect")
    x_BxHxPx1 = wav_BxS.reshape(wav_BxS.shape[0], -1, p, 1)
    x_BxHxPxC, fmaps = _leaky_stack(self.convs, x_BxHxPx1)
    logits_BxHxPx1 = self.conv_post(x_BxHxPxC)
    return logits_BxHxPx1.reshape(wav_BxS.shape[0], -1), fmaps + [logits_BxHxPx1]


class MultiPeriodDiscriminator(nnx.Module):
  def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: Sequence[int] = MPD_CHANNELS, *,
               rngs: nnx.Rngs):
    self.discriminators = nnx.List([PeriodDiscriminator(p, tuple(channels), rngs) for p in periods])

  def __call__(self, wav_BxS: jax.Array) -> Outputs:
    outs = [d(wav_BxS) for d in self.discriminators]
    return [logits for logits, _ in outs], [fmaps for _, fmaps in outs]


def spectrogram(wav_BxS: jax.Array, window: int, peak_floor: float = 1e-9) -> jax.Array:
  """DAC's discriminator input: DC removed, peak at 0.8 (dividing by peak + `peak_floor`), complex STFT (periodic
  Hann, hop window / 4, centred, reflect-padded) as (B, T, window // 2 + 1, 2) real and imaginary parts."""
  wav_BxS = wav_BxS - wav_BxS.mean(-1, keepdims=True)
  wav_BxS = 0.8 * wav_BxS / (jnp.abs(wav_BxS).max(-1, keepdims=True) + peak_floor)
  padded_BxS = jnp.pad(wav_BxS, ((0, 0), (window // 2, window // 2)), mode="reflect")
  frames_BxTxN = features._frames(padded_BxS, window, window // 4)  # pylint: disable=protected-access
  spec_BxTxF = jnp.fft.rfft(frames_BxTxN * hann_window(window), axis=-1)
  return jnp.stack([spec_BxTxF.real, spec_BxTxF.imag], axis=-1)


class ResolutionDiscriminator(nnx.Module):
  def __init__(self, window: int, channels: int, rngs: nnx.Rngs, peak_floor: float = 1e-9):
    self.window, self.peak_floor = window, peak_floor
    bins = window // 2 + 1
    self.bands = tuple((int(lo * bins), int(hi * bins)) for lo, hi in BANDS)

    def band_stack():
      return nnx.List([Conv2d(2, channels, (3, 9), padding=(1, 4), rngs=rngs),
                       *(Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4), rngs=rngs)
                         for _ in range(3)),
                       Conv2d(channels, channels, (3, 3), padding=(1, 1), rngs=rngs)])
    self.band_convs = nnx.List([band_stack() for _ in self.bands])
    self.conv_post = Conv2d(channels, 1, (3, 3), padding=(1, 1), rngs=rngs)

  def __call__(self, wav_BxS: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """Logits (B, T, bands' reduced bins, 1)."""
    spec_BxTxFx2 = spectrogram(wav_BxS, self.window, self.peak_floor)
    if platform() == "cpu":
      fmaps, outs = [], []
      for (lo, hi), convs in zip(self.bands, self.band_convs):
        x_BxTxFxC, band_fmaps = _leaky_stack(convs, spec_BxTxFx2[:, :, lo:hi])
        fmaps += band_fmaps
        outs.append(x_BxTxFxC)
    else:
      outs, fmaps = self._bands_at_once(spec_BxTxFx2)
    logits_BxTxFx1 = self.conv_post(jnp.concatenate(outs, axis=2))
    return logits_BxTxFx1, fmaps + [logits_BxTxFx1]

  def _bands_at_once(self, spec_BxTxFx2: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
    """(band outputs, band feature maps) with the band stacks as one grouped convolution per layer: the TPU
    compiler's time and memory grow with the number of convolutions. Each band is zero-padded to the widest and
    its activations are zeroed past its own width after every layer, so it sees exactly what it does alone."""
    widths_N = [hi - lo for lo, hi in self.bands]
    f = max(widths_N)
    x_NxBxTxFxC = jnp.stack([jnp.pad(spec_BxTxFx2[:, :, lo:hi], ((0, 0), (0, 0), (0, f - (hi - lo)), (0, 0)))
                             for lo, hi in self.bands])
    per_layer = []
    for layer in zip(*self.band_convs):
      kernel_NxHxWxIxO = jnp.stack([conv.kernel() for conv in layer])
      bias_NxO = jnp.stack([conv.bias[...] for conv in layer])
      x_NxBxTxFxC = jax.vmap(layer[0].apply)(x_NxBxTxFxC, kernel_NxHxWxIxO, bias_NxO)
      widths_N = [layer[0].out_width(w) for w in widths_N]
      valid_NxF = jnp.arange(x_NxBxTxFxC.shape[3]) < jnp.asarray(widths_N)[:, None]
      x_NxBxTxFxC = jnp.where(valid_NxF[:, None, None, :, None], jax.nn.leaky_relu(x_NxBxTxFxC, LRELU_SLOPE), 0.0)
      per_layer.append((x_NxBxTxFxC, widths_N))
    fmaps = [x[n, :, :, :widths[n]] for n in range(len(self.bands)) for x, widths in per_layer[1:]]
    x, widths = per_layer[-1]
    return [x[n, :, :, :w] for n, w in enumerate(widths)], fmaps


class MultiResolutionDiscriminator(nnx.Module):
  """`peak_floor`: Vocos' 1e-9 turns a silent input (a generator at init) into gradients of ~1e9 × its samples."""

  def __init__(self, windows: Sequence[int] = (2048, 1024, 512), channels: int = 32, *, rngs: nnx.Rngs,
               peak_floor: float = 1e-9):
    self.discriminators = nnx.List([ResolutionDiscriminator(w, channels, rngs, peak_floor) for w in windows])

  def __call__(self, wav_BxS: jax.Array) -> Outputs:
    outs = [d(wav_BxS) for d in self.discriminators]
    return [logits for logits, _ in outs], [fmaps for _, fmaps in outs]

