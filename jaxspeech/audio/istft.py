"""Inverse STFT with "same" padding (Vocos' `ISTFT(padding="same")`), jittable.

torch.istft only trims `center=True` padding; a vocoder predicting T frames wants exactly T · hop samples.
Frames are inverse-FFT'd, Hann-windowed and overlap-added; (n_fft - hop) / 2 samples are trimmed from each
end and the sum is divided by the overlap-added squared window (the least-squares ISTFT).

On TPU the inverse real FFT is a matmul against the inverse-DFT basis: the MXU does it at full rate, where the
TPU's FFT is slow and this libtpu's cost model prices it at a negative time (benchmarks/RESULTS.md).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxspeech import sharding


def hann_window(n: int) -> np.ndarray:
  """torch.hann_window(n) (periodic), float32."""
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def overlap_add(frames_BxTxN: jax.Array, hop: int) -> jax.Array:
  """Σ_t frame_t placed at t · hop: (B, T, N) → (B, (T - 1) · hop + N); N must be a multiple of hop."""
  b, t, n = frames_BxTxN.shape
  if n % hop:
    raise ValueError(f"overlap_add needs the frame length {n} to be a multiple of the hop {hop}")
  parts = n // hop
  chunks_BxTxPxH = frames_BxTxN.reshape(b, t, parts, hop)
  out_BxCxH = jnp.zeros((b, t + parts - 1, hop), frames_BxTxN.dtype)
  for p in range(parts):   # chunk p of frame t lands on output chunk t + p
    out_BxCxH = out_BxCxH.at[:, p:p + t].add(chunks_BxTxPxH[:, :, p])
  return out_BxCxH.reshape(b, -1)


@functools.cache
def _inverse_dft_basis(n: int) -> np.ndarray:
  """(2 · (n // 2 + 1), n): [real; imaginary] rows whose product with [Re X, Im X] is irfft(X, n). As irfft
  does, the imaginary parts of the DC and Nyquist bins are dropped (their sines are zero)."""
  k_F, t_N = np.arange(n // 2 + 1)[:, None], np.arange(n)[None, :]
  weight_F = np.where((k_F == 0) | (2 * k_F == n), 1.0, 2.0) / n
  angle_FxN = 2 * np.pi * k_F * t_N / n
  return np.concatenate([weight_F * np.cos(angle_FxN), -weight_F * np.sin(angle_FxN)]).astype(np.float32)


def irfft_matmul(spec_BxTxF: jax.Array, n: int) -> jax.Array:
  """jnp.fft.irfft(spec, n, axis=-1) as one float32 matmul (full precision)."""
  parts_BxTx2F = jnp.concatenate([spec_BxTxF.real, spec_BxTxF.imag], axis=-1)
  return jnp.matmul(parts_BxTx2F, _inverse_dft_basis(n), precision=jax.lax.Precision.HIGHEST)


def istft_same(spec_BxTxF: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """Complex spectrogram (B, T, n_fft // 2 + 1) → wav (B, T · hop)."""
  window_N = hann_window(n_fft)
  irfft = irfft_matmul if sharding.platform() == "tpu" else functools.partial(jnp.fft.irfft, axis=-1)
  frames_BxTxN = irfft(spec_BxTxF, n=n_fft) * window_N
  t, pad = spec_BxTxF.shape[1], (n_fft - hop) // 2
  envelope = overlap_add(jnp.broadcast_to(window_N ** 2, (1, t, n_fft)), hop)[0]
  wav = overlap_add(frames_BxTxN, hop)
  return wav[:, pad:-pad] / envelope[pad:-pad]
