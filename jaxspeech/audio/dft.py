"""Real DFTs that choose their kernel by the platform a step is traced for (`sharding.platform()`).

On TPU each is one float32 matmul (full precision) against the DFT basis: the MXU runs it at full rate, where the
TPU's FFT is slow and this libtpu's cost model prices steps that hold it at a negative time (benchmarks/RESULTS.md).
Elsewhere they are jnp.fft's.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxspeech import sharding


@functools.cache
def _forward_basis(n: int) -> np.ndarray:
  """(n, 2 · (n // 2 + 1)): [cos | −sin] columns whose product with a length-n frame is [Re, Im] of its rfft."""
  t_N, k_F = np.arange(n)[:, None], np.arange(n // 2 + 1)[None, :]
  angle_NxF = 2 * np.pi * t_N * k_F / n
  return np.concatenate([np.cos(angle_NxF), -np.sin(angle_NxF)], axis=1).astype(np.float32)


@functools.cache
def _inverse_basis(n: int) -> np.ndarray:
  """(2 · (n // 2 + 1), n): [real; imaginary] rows whose product with [Re X, Im X] is irfft(X, n). As irfft
  does, the imaginary parts of the DC and Nyquist bins are dropped (their sines are zero)."""
  k_F, t_N = np.arange(n // 2 + 1)[:, None], np.arange(n)[None, :]
  weight_F = np.where((k_F == 0) | (2 * k_F == n), 1.0, 2.0) / n
  angle_FxN = 2 * np.pi * k_F * t_N / n
  return np.concatenate([weight_F * np.cos(angle_FxN), -weight_F * np.sin(angle_FxN)]).astype(np.float32)


def rfft_matmul(x_xN: jax.Array, n: int) -> jax.Array:
  """jnp.fft.rfft(x, n, axis=-1) as one float32 matmul; frames shorter than n are zero-padded, as rfft does."""
  basis = _forward_basis(n)[:x_xN.shape[-1]]
  parts_x2F = jnp.matmul(x_xN.astype(jnp.float32), basis, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.complex(*jnp.split(parts_x2F, 2, axis=-1))


def irfft_matmul(spec_xF: jax.Array, n: int) -> jax.Array:
  """jnp.fft.irfft(spec, n, axis=-1) as one float32 matmul."""
  parts_x2F = jnp.concatenate([spec_xF.real, spec_xF.imag], axis=-1)
  return jnp.matmul(parts_x2F, _inverse_basis(n), precision=jax.lax.Precision.HIGHEST)


def rfft(x_xN: jax.Array, n: int | None = None) -> jax.Array:
  """The real DFT over the last axis (length `n`, default the frame's)."""
  n = x_xN.shape[-1] if n is None else n
  return rfft_matmul(x_xN, n) if sharding.platform() == "tpu" else jnp.fft.rfft(x_xN, n=n, axis=-1)


def irfft(spec_xF: jax.Array, n: int) -> jax.Array:
  """The inverse real DFT over the last axis, to `n` samples."""
  return irfft_matmul(spec_xF, n) if sharding.platform() == "tpu" else jnp.fft.irfft(spec_xF, n=n, axis=-1)
