"""X-codec2's SemanticEncoder and SemanticDecoder: the same three-conv residual stack (k3, 'same' padding).

    h = initial_conv(x)                      (no bias)
    y = final_conv(res(h) + relu(h))         res = ReLU → conv → ReLU → conv; final_conv has no bias

xcodec2's first ReLU is in place, so its skip connection adds relu(h), not h; this matches it.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspeech.nn.conv import Conv1d


class SemanticConv(nnx.Module):
  """(B, N, in_channels) → (B, N, out_channels) through `hidden` channels."""

  def __init__(self, in_channels: int, hidden: int, out_channels: int, *, rngs: nnx.Rngs,
               dtype: jnp.dtype = jnp.float32):
    self.initial_conv = Conv1d(in_channels, hidden, 3, use_bias=False, dtype=dtype, rngs=rngs)
    self.conv1 = Conv1d(hidden, hidden, 3, dtype=dtype, rngs=rngs)
    self.conv2 = Conv1d(hidden, hidden, 3, dtype=dtype, rngs=rngs)
    self.final_conv = Conv1d(hidden, out_channels, 3, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxNxC: jax.Array) -> jax.Array:
    h_BxNxH = jax.nn.relu(self.initial_conv(x_BxNxC))
    res_BxNxH = self.conv2(jax.nn.relu(self.conv1(h_BxNxH)))
    return self.final_conv(res_BxNxH + h_BxNxH)
