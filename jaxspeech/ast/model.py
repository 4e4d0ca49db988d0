"""Audio Spectrogram Transformer (Gong et al. 2021), with HF `ASTForAudioClassification` semantics.

Input: a (normalised) Kaldi fbank `fbank_BxTxF`. It is read as an image F×T (frequency is the
height), cut into 16×16 patches with strides (fstride, tstride), frequency-major patch order.
A cls and a distillation token are prepended; the head classifies the mean of their outputs
(`pool="cls"`, HF's) or of the patch tokens' outputs (`pool="mean"`, SSAST's fine-tuning default).
`time_patch` makes patches non-square (SSAST's frame patches are 128 × 2); `num_classes=0` builds the
encoder alone, without the head (SSAST pretraining). A `PETLConfig` adds the modules of one parameter-efficient
fine-tuning method (`jaxspeech.ast.adapters`); `PETLAST` holds such an AST for training.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspeech.ast import adapters
from jaxspeech.ast.adapters import PETLConfig
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
  attention_block_kib: int = 0    # attention in blocks of batch rows, logits ≤ this (layers.dot_product_attention)

  @property
  def patch_shape(self) -> tuple[int, int]:
    """(frequency bins, frames) of one patch."""
    return self.patch, self.time_patch or self.patch

  def grid(self, frames: int | None = None) -> tuple[int, int]:
    """Patch grid (f, t) for an input of `frames` frames."""
    frames = self.max_frames if frames is None else frames
    pf, pt = self.patch_shape
    return (self.num_mel_bins - pf) // self.fstride + 1, (frames - pt) // self.tstride + 1


def last_block_tokens(cfg: ASTConfig, petl: PETLConfig | None) -> int | None:
  """Tokens the classifier's last block computes: the cls and distillation ones when the head reads only them
  (`pool="cls"`) and no sublayer adapter mixes tokens (a conformer adapter does); None: every token."""
  adapted = petl is not None and (petl.adapts("attn") or petl.adapts("mlp"))
  return 2 if cfg.pool == "cls" and not adapted else None


class Attention(nnx.Module):
  def __init__(self, cfg: ASTConfig, rngs: nnx.Rngs, petl: PETLConfig | None = None):
    d, h, dtype = cfg.hidden, cfg.heads, jnp.dtype(cfg.dtype)
    in_proj, out_proj = ((d,), (h, d // h), ("embed", "heads", "kv")), ((h, d // h), (d,), ("heads", "kv", "embed"))
    shapes = {"query": in_proj, "key": in_proj, "value": in_proj, "out": out_proj}
    for name, (n_in, n_out, axes) in shapes.items():
      setattr(self, name, layers.dense(n_in, n_out, axes, rngs=rngs, dtype=dtype))
    self.lora = adapters.lora_modules(petl, shapes, dtype, rngs)
    self.block_bytes = cfg.attention_block_kib * 1024

  def project(self, name: str, x):
    """Projection `name` of x, plus its LoRA update when it has one."""
    y = getattr(self, name)(x)
    return y + self.lora[name](x) if self.lora is not None and name in self.lora else y

  def __call__(self, x_BxLxD, queries: int | None = None):
    """Self-attention of x; with `queries`, the outputs of the first `queries` tokens only."""
    q = self.project("query", x_BxLxD[:, :queries])
    k, v = self.project("key", x_BxLxD), self.project("value", x_BxLxD)
    return self.project("out", layers.dot_product_attention(q, k, v, block_bytes=self.block_bytes))


class Block(nnx.Module):
  """Pre-LN ViT block: x + Attn(LN(x)), then x + MLP(LN(x)) with exact (erf) GELU; an adapter of a sublayer
  adds its output to the sublayer's (x + y + A(h, y), h = LN(x), y = sublayer(h))."""

  def __init__(self, cfg: ASTConfig, rngs: nnx.Rngs, petl: PETLConfig | None = None):
    dtype = jnp.dtype(cfg.dtype)
    self.norm1 = layers.layer_norm(cfg.hidden, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.attn = Attention(cfg, rngs, petl)
    self.norm2 = layers.layer_norm(cfg.hidden, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.fc1 = layers.dense(cfg.hidden, cfg.mlp, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = layers.dense(cfg.mlp, cfg.hidden, ("mlp", "embed"), dtype=dtype, rngs=rngs)
    self.attn_adapter = adapters.sublayer_adapter(petl, "attn", cfg.hidden, dtype, rngs)
    self.mlp_adapter = adapters.sublayer_adapter(petl, "mlp", cfg.hidden, dtype, rngs)

  def mlp(self, h_BxLxD):
    return self.fc2(layers.gelu(self.fc1(h_BxLxD)))

  def __call__(self, x_BxLxD, keep: int | None = None):
    """The block's output; with `keep`, of the first `keep` tokens only (their attention reads every token;
    nothing else is computed for the others). Adapters see only those tokens, so `keep` is for a block
    without them."""
    h_BxLxD = self.norm1(x_BxLxD)
    x_BxQxD = x_BxLxD[:, :keep] + _adapted(self.attn_adapter, h_BxLxD[:, :keep], self.attn(h_BxLxD, keep))
    h_BxQxD = self.norm2(x_BxQxD)
    x_BxQxD = x_BxQxD + _adapted(self.mlp_adapter, h_BxQxD, self.mlp(h_BxQxD))
    return constrain(x_BxQxD, BLOCK_AXES)


def _adapted(adapter, h_BxLxD, y_BxLxD):
  """A sublayer's output y plus its adapter's A(h, y), when it has one."""
  return y_BxLxD if adapter is None else y_BxLxD + adapter(h_BxLxD, y_BxLxD)


class AST(nnx.Module):
  def __init__(self, cfg: ASTConfig, rngs: nnx.Rngs, petl: PETLConfig | None = None):
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
    self.blocks = nnx.List([Block(cfg, rngs, petl) for _ in range(cfg.layers)])
    self.prompt = adapters.prompt_tokens(petl, d, cfg.patch_shape[0] * cfg.patch_shape[1], rngs)
    self.norm = layers.layer_norm(d, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    if cfg.pool not in ("cls", "mean"):
      raise ValueError(f"ASTConfig.pool={cfg.pool!r}; choose 'cls' or 'mean'")
    self.keep = last_block_tokens(cfg, petl)
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

  def encode(self, x_BxNxD: jax.Array, frames: int, keep: int | None = None) -> jax.Array:
    """Prepends the cls and distillation tokens, adds positions, runs the blocks and the final norm.

    Prompt tokens (prompt tuning) go in after the two tokens, without positions, and are dropped at the end.
    With `keep`, the last block computes the first `keep` tokens only, and only those are returned.
    """
    b, d = x_BxNxD.shape[0], self.cfg.hidden
    tokens_Bx2xD = jnp.concatenate([self.cls_token[...], self.dist_token[...]], axis=1)
    x_BxLxD = jnp.concatenate([jnp.broadcast_to(tokens_Bx2xD, (b, 2, d)).astype(x_BxNxD.dtype), x_BxNxD], axis=1)
    x_BxLxD = x_BxLxD + self.positions(frames).astype(x_BxLxD.dtype)
    if self.prompt is not None:
      prompt_BxPxD = jnp.broadcast_to(self.prompt[...], (b,) + self.prompt.shape[1:]).astype(x_BxLxD.dtype)
      x_BxLxD = jnp.concatenate([x_BxLxD[:, :2], prompt_BxPxD, x_BxLxD[:, 2:]], axis=1)
    x_BxLxD = constrain(x_BxLxD, BLOCK_AXES)
    for i, block in enumerate(self.blocks):
      x_BxLxD = block(x_BxLxD, keep if i == len(self.blocks) - 1 else None)
    if self.prompt is not None and keep is None:
      x_BxLxD = jnp.concatenate([x_BxLxD[:, :2], x_BxLxD[:, 2 + self.prompt.shape[1]:]], axis=1)
    return self.norm(x_BxLxD[:, :keep])

  def features(self, fbank_BxTxF: jax.Array) -> jax.Array:
    """Final-norm hidden states (B, 2 + f·t, D); rows 0 and 1 are the cls and distillation tokens."""
    return self.encode(self.patchify(fbank_BxTxF), fbank_BxTxF.shape[1])

  def __call__(self, fbank_BxTxF: jax.Array) -> jax.Array:
    """Logits (B, num_classes), float32.

    With `pool="cls"` the last block computes the cls and distillation tokens only (`last_block_tokens`).
    """
    if self.cfg.pool == "mean":
      pooled_BxD = self.features(fbank_BxTxF)[:, 2:].mean(axis=1)
    else:
      h_BxLxD = self.encode(self.patchify(fbank_BxTxF), fbank_BxTxF.shape[1], self.keep)
      pooled_BxD = (h_BxLxD[:, 0] + h_BxLxD[:, 1]) / 2
    return self.head(self.head_norm(pooled_BxD)).astype(jnp.float32)


class PETLAST(nnx.Module):
  """An AST adapted by one PETL method, held under the method's name (params `lora.blocks.0...`): the
  trainer's param groups see only param paths, and the path is how they know which params the method trains."""

  def __init__(self, cfg: ASTConfig, petl: PETLConfig, rngs: nnx.Rngs):
    self.kind = petl.kind
    setattr(self, petl.kind, AST(cfg, rngs, petl))

  @property
  def ast(self) -> AST:
    return getattr(self, self.kind)

  def __call__(self, fbank_BxTxF: jax.Array) -> jax.Array:
    return self.ast(fbank_BxTxF)
