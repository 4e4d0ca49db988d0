"""w2v-BERT 2.0's conformer encoder (transformers' `Wav2Vec2BertModel`, inference), the codec's semantic teacher.

    x = projection(LN(features_BxTx160))                                     hidden_states[0]
    per layer:  x += ½·FFN1(LN x);  x += MHSA(LN x);  x += Conv(x);  x += ½·FFN2(LN x);  x = LN x
    Conv(x) = pointwise(swish(LN(depthwise_causal(GLU(pointwise(LN x))))))   depthwise k31, left-padded by k - 1
    FFN(x) = dense(swish(dense(x)))                                          hidden_states[i] is x after i layers

`cfg.layers` layers are built and run: hidden_states[cfg.layers] is the last output (X-codec2 takes [16] of 24).
Attention positions (`cfg.position`, HF's `position_embeddings_type`): "relative_key" (w2v-BERT 2.0: a learned
per-head-dim embedding of the clipped distance j - i in [-left_max, right_max], added to q·k as q·E[j - i]),
"rotary" (HF rotates the layer-normed input of q and k, not q and k) or None. No attention mask: every row of a
batch is one whole utterance, as X-codec2 runs it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.nn import layers

POSITIONS = ("relative_key", "rotary", None)



@dataclasses.dataclass(frozen=True)
class W2VBertConfig:
  """Defaults: facebook/w2v-bert-2.0 (HF `Wav2Vec2BertConfig` defaults) up to hidden_states[16], the layer X-codec2
  uses."""
  input_dim: int = 160
  dim: int = 1024
  layers: int = 16
  heads: int = 16
  intermediate: int = 4096
  conv_kernel: int = 31
  position: str | None = "relative_key"   # one of POSITIONS
  left_max: int = 64
  right_max: int = 8
  rotary_base: float = 10000
  eps: float = 1e-5

class FeedForward(nnx.Module):
  def __init__(self, dim: int, hidden: int, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.intermediate_dense = layers.dense(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.output_dense = layers.dense(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    return self.output_dense(jax.nn.swish(self.intermediate_dense(x_BxTxD)))


class ConvModule(nnx.Module):
  def __init__(self, dim: int, kernel: int, eps: float, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.layer_norm = layers.layer_norm(dim, epsilon=eps, dtype=dtype, rngs=rngs)
    self.pointwise_conv1 = layers.dense(dim, 2 * dim, ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
    self.depthwise_conv = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (kernel, 1, dim)),
                                    out_sharding=(None, None, "embed"))
    self.depthwise_layer_norm = layers.layer_norm(dim, epsilon=eps, dtype=dtype, rngs=rngs)
    self.pointwise_conv2 = layers.dense(dim, dim, ("mlp", "embed"), use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    h_BxTx2D = self.pointwise_conv1(self.layer_norm(x_BxTxD))
    h_BxTxD = jax.nn.glu(h_BxTx2D, axis=-1)
    kernel_Kx1xD = self.depthwise_conv[...].astype(self.dtype)
    h_BxTxD = layers.conv1d(h_BxTxD, kernel_Kx1xD, padding=(kernel_Kx1xD.shape[0] - 1, 0), groups=h_BxTxD.shape[-1])
    return self.pointwise_conv2(jax.nn.swish(self.depthwise_layer_norm(h_BxTxD)))


def rotate(x_BxTxHxK: jax.Array, base: float) -> jax.Array:
  """Rotate-half rotary embedding of positions 0..T-1 (HF's `Wav2Vec2BertRotaryPositionalEmbedding`), in x's
  dtype as HF rotates it (`layers.apply_rope` rotates in float32)."""
  T = x_BxTxHxK.shape[1]
  inv_freq_H = layers.rope_inv_freq(x_BxTxHxK.shape[-1], base)
  angles_TxK = np.concatenate([np.arange(T, dtype=np.float32)[:, None] * inv_freq_H] * 2, axis=-1)
  cos_Tx1xK = jnp.asarray(np.cos(angles_TxK)[:, None], x_BxTxHxK.dtype)
  sin_Tx1xK = jnp.asarray(np.sin(angles_TxK)[:, None], x_BxTxHxK.dtype)
  first, second = jnp.split(x_BxTxHxK, 2, axis=-1)
  return x_BxTxHxK * cos_Tx1xK + jnp.concatenate([-second, first], axis=-1) * sin_Tx1xK


class SelfAttention(nnx.Module):
  def __init__(self, cfg: W2VBertConfig, dtype: jnp.dtype, rngs: nnx.Rngs):
    heads, k = cfg.heads, cfg.dim // cfg.heads
    self.position, self.rotary_base, self.heads = cfg.position, cfg.rotary_base, heads
    self.left_max, self.right_max = cfg.left_max, cfg.right_max
    for name in ("linear_q", "linear_k", "linear_v"):
      setattr(self, name, layers.dense(cfg.dim, (heads, k), ("embed", "heads", "kv"), dtype=dtype, rngs=rngs))
    self.linear_out = layers.dense((heads, k), cfg.dim, ("heads", "kv", "embed"), dtype=dtype, rngs=rngs)
    if cfg.position == "relative_key":
      table_PxK = nnx.initializers.normal(1.0)(rngs.params(), (cfg.left_max + cfg.right_max + 1, k))
      self.distance_embedding = nnx.Param(table_PxK, out_sharding=(None, "kv"))

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    B, T, _ = x_BxTxD.shape
    qk_in_BxTxD = x_BxTxD
    if self.position == "rotary":
      qk_in_BxTxD = rotate(x_BxTxD.reshape(B, T, self.heads, -1), self.rotary_base).reshape(x_BxTxD.shape)
    q_BxTxHxK, k_BxTxHxK = self.linear_q(qk_in_BxTxD), self.linear_k(qk_in_BxTxD)
    v_BxTxHxK = self.linear_v(x_BxTxD)
    scale = q_BxTxHxK.shape[-1] ** -0.5
    logits_BxHxTxT = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxTxHxK, preferred_element_type=jnp.float32)
    if self.position == "relative_key":
      # q·E[d] for each of the P clipped distances, then picked per (i, j): cheaper than gathering E to (T, T, K).
      table_PxK = self.distance_embedding[...].astype(q_BxTxHxK.dtype)
      by_distance_BxHxTxP = jnp.einsum("bthk,pk->bhtp", q_BxTxHxK, table_PxK, preferred_element_type=jnp.float32)
      distance_TxT = np.clip(np.arange(T)[None, :] - np.arange(T)[:, None], -self.left_max, self.right_max)
      index_TxT = jnp.asarray(distance_TxT + self.left_max)
      logits_BxHxTxT += jnp.take_along_axis(by_distance_BxHxTxP, jnp.broadcast_to(index_TxT, (B, self.heads, T, T)),
                                            axis=-1)
    probs_BxHxTxT = jax.nn.softmax(logits_BxHxTxT * scale, axis=-1).astype(v_BxTxHxK.dtype)
    return self.linear_out(jnp.einsum("bhts,bshk->bthk", probs_BxHxTxT, v_BxTxHxK))


class ConformerLayer(nnx.Module):
  def __init__(self, cfg: W2VBertConfig, dtype: jnp.dtype, rngs: nnx.Rngs):
    norm = lambda: layers.layer_norm(cfg.dim, epsilon=cfg.eps, dtype=dtype, rngs=rngs)
    self.ffn1_layer_norm, self.ffn1 = norm(), FeedForward(cfg.dim, cfg.intermediate, dtype, rngs)
    self.self_attn_layer_norm, self.self_attn = norm(), SelfAttention(cfg, dtype, rngs)
    self.conv_module = ConvModule(cfg.dim, cfg.conv_kernel, cfg.eps, dtype, rngs)
    self.ffn2_layer_norm, self.ffn2 = norm(), FeedForward(cfg.dim, cfg.intermediate, dtype, rngs)
    self.final_layer_norm = norm()

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    x_BxTxD = x_BxTxD + 0.5 * self.ffn1(self.ffn1_layer_norm(x_BxTxD))
    x_BxTxD = x_BxTxD + self.self_attn(self.self_attn_layer_norm(x_BxTxD))
    x_BxTxD = x_BxTxD + self.conv_module(x_BxTxD)
    x_BxTxD = x_BxTxD + 0.5 * self.ffn2(self.ffn2_layer_norm(x_BxTxD))
    return self.final_layer_norm(x_BxTxD)


class FeatureProjection(nnx.Module):
  def __init__(self, cfg: W2VBertConfig, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.layer_norm = layers.layer_norm(cfg.input_dim, epsilon=cfg.eps, dtype=dtype, rngs=rngs)
    self.projection = layers.dense(cfg.input_dim, cfg.dim, (None, "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, features_BxTxF: jax.Array) -> jax.Array:
    return self.projection(self.layer_norm(features_BxTxF))


class W2VBert(nnx.Module):
  """Computes in `dtype`; params float32."""

  def __init__(self, cfg: W2VBertConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
    if cfg.position not in POSITIONS:
      raise ValueError(f"w2vbert.position must be one of {POSITIONS}, got {cfg.position!r}")
    self.feature_projection = FeatureProjection(cfg, dtype, rngs)
    self.layers = nnx.List([ConformerLayer(cfg, dtype, rngs) for _ in range(cfg.layers)])

  def __call__(self, features_BxTxF: jax.Array) -> list[jax.Array]:
    """hidden_states[0..layers], each (B, T, dim), numbered as HF's `output_hidden_states`."""
    hidden = [self.feature_projection(features_BxTxF)]
    for layer in self.layers:
      hidden.append(layer(hidden[-1]))
    return hidden
