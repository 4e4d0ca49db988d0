"""1-D convolutions over channel-last activations (B, L, C), optionally weight-normalised as torch's."""

import jax
import jax.numpy as jnp
from flax import nnx

import jaxspeech.nn  # noqa: F401  (turns flax's eager sharding off before any param is made)
from jaxspeech.nn.layers import conv1d

INIT = nnx.initializers.truncated_normal(0.02)   # xcodec2's init_weights: trunc_normal(std=0.02), zero bias
# xcodec2's init_weights writes trunc_normal into `m.weight`, which under torch's weight-norm parametrization is
# a tensor recomputed from (g, v) on every access: the write is lost and v keeps torch's default Conv1d init,
# kaiming_uniform(a=√5) = U(±1/√fan_in). Starting weight-normed convs at std 0.02 instead shrinks the encoder's
# output to ~1e-6: every frame then gets FSQ's zero code and the first step's gradient overflows.
WN_INIT = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class Conv1d(nnx.Module):
  """torch `Conv1d(in, out, kernel_size, stride, padding, dilation)` on (B, L, C); the kernel is (K, I, O).

  `weight_norm=True` is torch's `weight_norm(conv, dim=0)`: the params are the direction `weight_v` (K, I, O)
  and the per-output-channel gain `weight_g` (O,), and the kernel is g · v / ‖v‖ (norm over K and I).
  Params are float32; the convolution runs in `dtype`.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, rngs: nnx.Rngs, stride: int = 1,
               dilation: int = 1, padding: int | None = None, use_bias: bool = True, weight_norm: bool = False,
               dtype: jnp.dtype = jnp.float32):
    self.stride, self.dilation, self.weight_norm, self.dtype = stride, dilation, weight_norm, jnp.dtype(dtype)
    self.padding = (kernel_size - 1) * dilation // 2 if padding is None else padding
    axes = (None, None, "embed")
    kernel_KxIxO = (WN_INIT if weight_norm else INIT)(rngs.params(), (kernel_size, in_channels, out_channels))
    if weight_norm:
      self.weight_v = nnx.Param(kernel_KxIxO, out_sharding=axes)
      # torch's weight_norm starts with g = ‖v‖, so the first kernel is v itself.
      self.weight_g = nnx.Param(jnp.sqrt(jnp.sum(kernel_KxIxO ** 2, axis=(0, 1))), out_sharding=("embed",))
    else:
      self.kernel = nnx.Param(kernel_KxIxO, out_sharding=axes)
    self.bias = nnx.Param(jnp.zeros((out_channels,)), out_sharding=("embed",)) if use_bias else None

  def weight(self) -> jax.Array:
    if not self.weight_norm:
      return self.kernel[...]
    v_KxIxO = self.weight_v[...]
    return v_KxIxO * (self.weight_g[...] / jnp.sqrt(jnp.sum(v_KxIxO ** 2, axis=(0, 1))))

  def __call__(self, x_BxLxI: jax.Array) -> jax.Array:
    y_BxLxO = conv1d(x_BxLxI.astype(self.dtype), self.weight().astype(self.dtype), stride=self.stride,
                     dilation=self.dilation, padding=(self.padding, self.padding))
    return y_BxLxO if self.bias is None else y_BxLxO + self.bias[...].astype(self.dtype)
