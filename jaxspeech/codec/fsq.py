"""Finite scalar quantisation (Mentzer et al. 2023) as vector-quantize-pytorch 1.17.8's
`ResidualFSQ(dim, levels, num_quantizers=1)`: its projections, code values and index order.

    h = project_in(x)                       (B, N, dim) → (B, N, len(levels))
    code = round(bound(bound(h))) / (L // 2)    ResidualFSQ bounds once and its FSQ layer again
    index = Σ_d (code_d · (L_d // 2) + L_d // 2) · Π_{e<d} L_e      (first level varies fastest)
    z_q = project_out(code)                 (B, N, len(levels)) → (B, N, dim)

Rounding is straight-through: the gradient of `code` is that of bound(bound(h)) / (L // 2). The projections
and the quantisation run in float32 whatever the model's dtype (vector-quantize-pytorch forces float32 too).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.nn import layers


def bound(h: jax.Array, levels: np.ndarray, eps: float = 1e-3) -> jax.Array:
  """Squashes each dim into (-(L-1)/2 - offset, (L-1)/2 - offset)·(1 + eps) so rounding gives L values."""
  half_l = (levels - 1) * (1 + eps) / 2
  offset = np.where(levels % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half_l)
  return (jnp.tanh(h + shift.astype(np.float32)) * half_l.astype(np.float32) - offset.astype(np.float32))


class FSQ(nnx.Module):
  def __init__(self, dim: int, levels, *, rngs: nnx.Rngs):
    self.levels = tuple(int(l) for l in levels)
    self.project_in = layers.dense(dim, len(self.levels), ("embed", None), rngs=rngs, torch_init=True)
    self.project_out = layers.dense(len(self.levels), dim, (None, "embed"), rngs=rngs, torch_init=True)

  @property
  def codebook_size(self) -> int:
    return int(np.prod(self.levels))

  def _half_width(self) -> np.ndarray:
    return (np.array(self.levels) // 2).astype(np.float32)

  def _basis(self) -> np.ndarray:
    return np.cumprod([1] + list(self.levels[:-1])).astype(np.int32)

  def quantize(self, x_BxNxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z_q (B, N, D), straight-through; indices (B, N) int32)."""
    levels = np.array(self.levels)
    h_BxNxd = bound(bound(self.project_in(x_BxNxD).astype(jnp.float32), levels), levels)
    rounded_BxNxd = h_BxNxd + jax.lax.stop_gradient(jnp.round(h_BxNxd) - h_BxNxd)
    code_BxNxd = rounded_BxNxd / self._half_width()
    return self.project_out(code_BxNxd), self.codes_to_indices(jax.lax.stop_gradient(code_BxNxd))

  def codes_to_indices(self, code_BxNxd: jax.Array) -> jax.Array:
    half_width = self._half_width()
    digits_BxNxd = jnp.round(code_BxNxd * half_width + half_width).astype(jnp.int32)
    return jnp.sum(digits_BxNxd * self._basis(), axis=-1)

  def indices_to_codes(self, indices_BxN: jax.Array) -> jax.Array:
    digits_BxNxd = (indices_BxN[..., None] // self._basis()) % np.array(self.levels, np.int32)
    half_width = self._half_width()
    return (digits_BxNxd.astype(jnp.float32) - half_width) / half_width

  def decode(self, indices_BxN: jax.Array) -> jax.Array:
    """z_q (B, N, D) of FSQ indices, as `ResidualFSQ.get_output_from_indices`."""
    return self.project_out(self.indices_to_codes(indices_BxN))
