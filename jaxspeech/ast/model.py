"""Audio Spectrogram Transformer (Gong et al. 2021), with HF `ASTForAudioClassification` semantics.

Input: a (normalised) Kaldi fbank `fbank_BxTxF`. It is read as an image F×T (frequency is the
height), cut into 16×16 patches with strides (fstride, tstride), frequency-major patch order.
A cls and a distillation token are prepended; the head classifies the mean of their outputs
(`pool="cls"`, HF's) or of the patch tokens' outputs (`pool="mean"`, SSAST's fine-tuning default).
`time_patch` makes patches non-square (SSAST's frame patches are 128 × 2); `num_classes=0` builds the
encoder alone, without the head (SSAST pretraining).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspeech.nn import layers
from jaxspeech.sharding import constrain

BLOCK_AXES = ("activation_batch", "activation_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class ASTConfig:
  num_classes: int = 527
  hidden: int = 768
  layers: int = 12
  heads: int = 12
  mlp: int = 3072
  num_mel_bins: int = 128
  max_frames: int = 1024          # T the positional embeddings were made for
  patch: int = 16
  time_patch: int = 0             # patch width in frames; 0 = square (patch × patch)
  fstride: int = 10
  tstride: int = 10
  layer_norm_eps: float = 1e-12
  dtype: str = "float32"          # compute dtype; params stay float32
  pool: str = "cls"               # head input: "cls" = mean of the cls and dist outputs; "mean" = of the patches

  @property
  def patch_shape(self) -> tuple[int, int]:
    """(frequency bins, frames) of one patch."""
    return self.patch, self.time_patch or self.patch

  def grid(self, frames: int | None = None) -> tuple[int, int]:
    """Patch grid (f, t) for an input of `frames` frames."""
    frames = self.max_frames if frames is None else frames
    pf, pt = self.patch_shape
    return (self.num_mel_bins - pf) // self.fstride + 1, (frames - pt) // self.tstride + 1


class Attention(nnx.Module):
  def __init__(self, cfg: ASTConfig, rngs: nnx.Rngs):
    d, h, dtype = cfg.hidden, cfg.heads, jnp.dtype(cfg.dtype)
    qkv = dict(rngs=rngs, dtype=dtype)
    self.query = layers.dense(d, (h, d // h), ("embed", "heads", "kv"), **qkv)
    self.key = layers.dense(d, (h, d // h), ("embed", "heads", "kv"), **qkv)
    self.value = layers.dense(d, (h, d // h), ("embed", "heads", "kv"), **qkv)
    self.out = layers.dense((h, d // h), d, ("heads", "kv", "embed"), **qkv)

  def __call__(self, x_BxLxD):
    q, k, v = self.query(x_BxLxD), self.key(x_BxLxD), self.value(x_BxLxD)
    return self.out(layers.dot_product_attention(q, k, v))


class Block(nnx.Module):
  """Pre-LN ViT block: x + Attn(LN(x)), then x + MLP(LN(x)) with exact (erf) GELU."""

  def __init__(self, cfg: ASTConfig, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.norm1 = layers.layer_norm(cfg.hidden, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.attn = Attention(cfg, rngs)
    self.norm2 = layers.layer_norm(cfg.hidden, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.fc1 = layers.dense(cfg.hidden, cfg.mlp, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = layers.dense(cfg.mlp, cfg.hidden, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x_BxLxD):
    x_BxLxD = x_BxLxD + self.attn(self.norm1(x_BxLxD))
    h_BxLxM = jax.nn.gelu(self.fc1(self.norm2(x_BxLxD)), approximate=False)
    return constrain(x_BxLxD + self.fc2(h_BxLxM), BLOCK_AXES)


class AST(nnx.Module):
  def __init__(self, cfg: ASTConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, dtype = cfg.hidden, jnp.dtype(cfg.dtype)
    init = nnx.initializers.truncated_normal(0.02)
    self.patch_embed = nnx.Conv(
        1, d, kernel_size=cfg.patch_shape, strides=(cfg.fstride, cfg.tstride), padding="VALID",
        dtype=dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(init, (None, None, None, "embed")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)))
    f, t = cfg.grid()
    self.cls_token = nnx.Param(nnx.with_partitioning(init, (None, None, "embed"))(rngs.params(), (1, 1, d)))
    self.dist_token = nnx.Param(nnx.with_partitioning(init, (None, None, "embed"))(rngs.params(), (1, 1, d)))
    self.pos_embed = nnx.Param(nnx.with_partitioning(init, (None, None, "embed"))(rngs.params(), (1, f * t + 2, d)))
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
    self.norm = layers.layer_norm(d, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    if cfg.pool not in ("cls", "mean"):
      raise ValueError(f"ASTConfig.pool={cfg.pool!r}; choose 'cls' or 'mean'")
    if cfg.num_classes:
      self.head_norm = layers.layer_norm(d, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
      self.head = layers.dense(d, cfg.num_classes, ("embed", "classes"), dtype=dtype, rngs=rngs)

  def positions(self, frames: int) -> jax.Array:
    """Positional embeddings for `frames` input frames: the time axis of the grid is resized linearly."""
    pos_1xNxD = self.pos_embed[...]
    f, t0 = self.cfg.grid()
    _, t = self.cfg.grid(frames)
    if t == t0:
      return pos_1xNxD
    grid_FxTxD = pos_1xNxD[0, 2:].reshape(f, t0, -1)
    grid_FxTxD = jax.image.resize(grid_FxTxD, (f, t, grid_FxTxD.shape[-1]), "linear")
    return jnp.concatenate([pos_1xNxD[:, :2], grid_FxTxD.reshape(1, f * t, -1)], axis=1)

  def patchify(self, fbank_BxTxF: jax.Array) -> jax.Array:
    """Patch embeddings (B, f·t, D), frequency-major, before tokens and positions are added."""
    image_BxFxTx1 = jnp.swapaxes(fbank_BxTxF, 1, 2)[..., None]
    patches_BxfxtxD = self.patch_embed(image_BxFxTx1)
    return patches_BxfxtxD.reshape(fbank_BxTxF.shape[0], -1, self.cfg.hidden)

  def encode(self, x_BxNxD: jax.Array, frames: int) -> jax.Array:
    """Prepends the cls and distillation tokens, adds positions, runs the blocks and the final norm."""
    b = x_BxNxD.shape[0]
    tokens_Bx2xD = jnp.concatenate([self.cls_token[...], self.dist_token[...]], axis=1)
    x_BxLxD = jnp.concatenate([jnp.broadcast_to(tokens_Bx2xD, (b, 2, self.cfg.hidden)).astype(x_BxNxD.dtype),
                               x_BxNxD], axis=1)
    x_BxLxD = constrain(x_BxLxD + self.positions(frames).astype(x_BxLxD.dtype), BLOCK_AXES)
    for block in self.blocks:
      x_BxLxD = block(x_BxLxD)
    return self.norm(x_BxLxD)

  def features(self, fbank_BxTxF: jax.Array) -> jax.Array:
    """Final-norm hidden states (B, 2 + f·t, D); rows 0 and 1 are the cls and distillation tokens."""
    return self.encode(self.patchify(fbank_BxTxF), fbank_BxTxF.shape[1])

  def __call__(self, fbank_BxTxF: jax.Array) -> jax.Array:
    """Logits (B, num_classes), float32."""
    h_BxLxD = self.features(fbank_BxTxF)
    if self.cfg.pool == "mean":
      pooled_BxD = h_BxLxD[:, 2:].mean(axis=1)
    else:
      pooled_BxD = (h_BxLxD[:, 0] + h_BxLxD[:, 1]) / 2
    return self.head(self.head_norm(pooled_BxD)).astype(jnp.float32)
