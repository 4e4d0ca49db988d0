"""F5-TTS's DiT and E2-TTS's flat U-Net Transformer (f5_tts/model/backbones/{dit,unett}.py), weight for weight.

Both predict the flow v(x_t, t | cond, text) of a mel `x_BxLxM`: `cond_BxLxM` is the mel with the frames to
generate zeroed, `text_BxNt` holds character ids with −1 as padding, `t_B` is in [0, 1]. `valid_BxL` marks
the frames of a padded batch (None = all). `drop_audio_B` / `drop_text_B` drop the conditions per example
(classifier-free guidance); F5 drops them for the whole batch.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspeech.dit import modules
from jaxspeech.dit.modules import BLOCK_AXES
from jaxspeech.nn import layers
from jaxspeech.sharding import constrain

# AdaLN shifts, scales and gates (B, k, D): rows as the activations, D whole like theirs. Left to propagation,
# D takes the kernel's tensor sharding, and XLA's SPMD partitioner then mixes up rows of a batch sharded over
# data × fsdp (one row per shard, params sharded over fsdp and tensor; GSPMD and Shardy alike; reduced form:
# tests/test_sharding.py::test_xla_cpu_spmd_keeps_batch_rows_apart).
MODULATION_AXES = ("activation_batch", None, "activation_embed")
@dataclasses.dataclass(frozen=True)
class DiTConfig:
  backbone: str = "dit"            # "dit" (F5-TTS) or "unett" (E2-TTS)
  dim: int = 1024
  depth: int = 22
  heads: int = 16
  dim_head: int = 64
  ff_mult: int = 2
  mel_dim: int = 100
  text_num_embeds: int = 256       # vocabulary size; the embedding has one more row (0 = filler)
  text_dim: int = 512
  conv_layers: int = 4             # ConvNeXt-V2 blocks over the text
  text_mask_padding: bool = True
  rope_heads: int = 0              # F5's pe_attn_head: heads with RoPE, 0 = all (F5TTS_v1); 1 for F5TTS_Base
  key_mask: bool = False           # F5's attn_mask_enabled: mask padded keys (its released models do not)
  attention_block_kib: int = 0     # off GPU: attention in blocks of batch rows, logits ≤ this (0: whole batch)
  skip_connect: str = "concat"     # UNetT skips: "concat", "add" or "none"
  dtype: str = "float32"           # compute dtype; params stay float32
  remat: str = "none"              # "none", "full" or "save_dots": layers.REMAT_POLICIES

  def __post_init__(self):
    if self.remat not in layers.REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r}; choose one of {sorted(layers.REMAT_POLICIES)}")
    if self.backbone not in ("dit", "unett"):
      raise ValueError(f"backbone={self.backbone!r}; choose 'dit' or 'unett'")
    if self.backbone == "unett" and (self.depth % 2 or self.skip_connect not in ("concat", "add", "none")):
      raise ValueError(f"UNetT needs an even depth and skip_connect in concat/add/none, got {self}")


# `model` fields of the dit family that are not DiTConfig's
FAMILY_FIELDS = ("vocab_file",)


def config_from(model) -> DiTConfig:
  """The DiTConfig of a config's `model` section, without the family's own fields; any other field is refused."""
  fields = {f.name for f in dataclasses.fields(DiTConfig)}
  unknown = sorted(set(model) - fields - set(FAMILY_FIELDS))
  if unknown:
    raise ValueError(f"unknown dit model field(s) {', '.join(unknown)}; DiTConfig has {', '.join(sorted(fields))}")
  return DiTConfig(**{k: v for k, v in dict(model).items() if k in fields})


def run_block(block: nnx.Module, remat: str, *args):
  """`block(*args)`, rematerialised under `remat`'s policy."""
  if remat == "none":
    return block(*args)
  graphdef, state = nnx.split(block)
  apply = jax.checkpoint(lambda state, *a: nnx.merge(graphdef, state)(*a), policy=layers.REMAT_POLICIES[remat])
  return apply(state, *args)


class Embeddings(nnx.Module):
  """Time, text and input embeddings; `dit` picks the DiT's padding handling over the UNetT's (none)."""

  def __init__(self, cfg: DiTConfig, dit: bool, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.time_embed = modules.TimestepEmbedding(cfg.dim, rngs)
    self.text_embed = modules.TextEmbedding(cfg.text_num_embeds, cfg.text_dim, cfg.conv_layers,
                                            cfg.text_mask_padding, dit, dtype, rngs)
    self.input_embed = modules.InputEmbedding(cfg.mel_dim, cfg.text_dim, cfg.dim, dit, dtype, rngs)

  def __call__(self, x_BxLxM, cond_BxLxM, text_BxNt, t_B, valid_BxL, drop_audio_B, drop_text_B):
    """(input embedding (B, L, D), time embedding (B, D))."""
    b = x_BxLxM.shape[0]
    t_BxD = self.time_embed(jnp.broadcast_to(t_B, (b,)))
    text_BxLxT = self.text_embed(text_BxNt, valid_BxL, jnp.broadcast_to(jnp.asarray(drop_text_B, bool), (b,)))
    drop_audio_B = jnp.broadcast_to(jnp.asarray(drop_audio_B, bool), (b,))
    return self.input_embed(x_BxLxM, cond_BxLxM, text_BxLxT, valid_BxL, drop_audio_B), t_BxD


class DiTBlock(nnx.Module):
  """AdaLN-zero block: one Linear(SiLU(t)) gives shift/scale/gate for attention and for the FFN, in that order."""

  def __init__(self, cfg: DiTConfig, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.modulation = layers.dense(cfg.dim, (6, cfg.dim), ("embed", None, "mlp"), rngs=rngs)
    self.attn = modules.Attention(cfg.dim, cfg.heads, cfg.dim_head, cfg.rope_heads, cfg.key_mask, dtype, rngs,
                                  cfg.attention_block_kib * 1024)
    self.ff = modules.FeedForward(cfg.dim, cfg.ff_mult, dtype, rngs)

  def __call__(self, x_BxLxD, t_BxD, valid_BxL, angles_LxK):
    mod_Bx6x1xD = constrain(self.modulation(jax.nn.silu(t_BxD)), MODULATION_AXES)[:, :, None]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (mod_Bx6x1xD[:, i] for i in range(6))
    dtype = x_BxLxD.dtype
    h = (modules.layer_norm(x_BxLxD) * (1 + scale_msa) + shift_msa).astype(dtype)
    x_BxLxD = x_BxLxD + (gate_msa * self.attn(h, valid_BxL, angles_LxK)).astype(dtype)
    h = (modules.layer_norm(x_BxLxD) * (1 + scale_mlp) + shift_mlp).astype(dtype)
    x_BxLxD = x_BxLxD + (gate_mlp * self.ff(h)).astype(dtype)
    return constrain(x_BxLxD, BLOCK_AXES)


class DiT(nnx.Module):
  def __init__(self, cfg: DiTConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    self.embed = Embeddings(cfg, True, rngs)
    self.blocks = nnx.List([DiTBlock(cfg, rngs) for _ in range(cfg.depth)])
    self.norm_out = layers.dense(cfg.dim, (2, cfg.dim), ("embed", None, "mlp"), rngs=rngs)
    self.proj_out = layers.dense(cfg.dim, cfg.mel_dim, ("embed", None), dtype=dtype, rngs=rngs)

  def __call__(self, x_BxLxM, cond_BxLxM, text_BxNt, t_B, valid_BxL=None, drop_audio_B=False, drop_text_B=False):
    """The predicted flow (B, L, mel_dim), float32."""
    b, n = x_BxLxM.shape[:2]
    valid_BxL = jnp.ones((b, n), bool) if valid_BxL is None else valid_BxL
    x_BxLxD, t_BxD = self.embed(x_BxLxM, cond_BxLxM, text_BxNt, t_B, valid_BxL, drop_audio_B, drop_text_B)
    x_BxLxD = constrain(x_BxLxD, BLOCK_AXES)
    angles_LxK = jnp.asarray(modules.rope_angles(n, self.cfg.dim_head))
    for block in self.blocks:
      x_BxLxD = run_block(block, self.cfg.remat, x_BxLxD, t_BxD, valid_BxL, angles_LxK)
    mod_Bx2xD = constrain(self.norm_out(jax.nn.silu(t_BxD)), MODULATION_AXES)
    scale_BxD, shift_BxD = jnp.moveaxis(mod_Bx2xD, 1, 0)  # F5's final order: scale, shift
    h = (modules.layer_norm(x_BxLxD) * (1 + scale_BxD[:, None]) + shift_BxD[:, None]).astype(x_BxLxD.dtype)
    return self.proj_out(h).astype(jnp.float32)


class UNetTLayer(nnx.Module):
  def __init__(self, cfg: DiTConfig, skip_proj: bool, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    if skip_proj:
      self.skip_proj = layers.dense(2 * cfg.dim, cfg.dim, ("mlp", "embed"), dtype=dtype, use_bias=False, rngs=rngs)
    self.attn_norm = modules.RMSNorm(cfg.dim, rngs)
    self.attn = modules.Attention(cfg.dim, cfg.heads, cfg.dim_head, cfg.rope_heads, cfg.key_mask, dtype, rngs,
                                  cfg.attention_block_kib * 1024)
    self.ff_norm = modules.RMSNorm(cfg.dim, rngs)
    self.ff = modules.FeedForward(cfg.dim, cfg.ff_mult, dtype, rngs)

  def __call__(self, x_BxLxD, valid_BxL, angles_LxK):
    x_BxLxD = x_BxLxD + self.attn(self.attn_norm(x_BxLxD), valid_BxL, angles_LxK)
    return constrain(x_BxLxD + self.ff(self.ff_norm(x_BxLxD)), BLOCK_AXES)


class UNetT(nnx.Module):
  """Pre-RMSNorm Transformer with the time embedding as a leading token; each layer of the second half first
  merges the output of its mirror in the first half (concatenated and projected, added, or not at all)."""

  def __init__(self, cfg: DiTConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    self.embed = Embeddings(cfg, False, rngs)
    half = cfg.depth // 2
    self.layers = nnx.List([UNetTLayer(cfg, i >= half and cfg.skip_connect == "concat", rngs)
                            for i in range(cfg.depth)])
    self.norm_out = modules.RMSNorm(cfg.dim, rngs)
    self.proj_out = layers.dense(cfg.dim, cfg.mel_dim, ("embed", None), dtype=dtype, rngs=rngs)

  def __call__(self, x_BxLxM, cond_BxLxM, text_BxNt, t_B, valid_BxL=None, drop_audio_B=False, drop_text_B=False):
    b, n = x_BxLxM.shape[:2]
    valid_BxL = jnp.ones((b, n), bool) if valid_BxL is None else valid_BxL
    x_BxLxD, t_BxD = self.embed(x_BxLxM, cond_BxLxM, text_BxNt, t_B, valid_BxL, drop_audio_B, drop_text_B)
    x_BxLxD = jnp.concatenate([t_BxD[:, None].astype(x_BxLxD.dtype), x_BxLxD], axis=1)
    valid_BxL = jnp.pad(valid_BxL, ((0, 0), (1, 0)), constant_values=True)
    angles_LxK = jnp.asarray(modules.rope_angles(n + 1, self.cfg.dim_head))
    half, skips = self.cfg.depth // 2, []
    for i, layer in enumerate(self.layers):
      if i < half:
        skips.append(x_BxLxD)
      elif self.cfg.skip_connect == "concat":
        x_BxLxD = layer.skip_proj(jnp.concatenate([x_BxLxD, skips.pop()], -1))
      elif self.cfg.skip_connect == "add":
        x_BxLxD = x_BxLxD + skips.pop()
      x_BxLxD = run_block(layer, self.cfg.remat, x_BxLxD, valid_BxL, angles_LxK)
    return self.proj_out(self.norm_out(x_BxLxD)[:, 1:]).astype(jnp.float32)


def build(cfg: DiTConfig, rngs: nnx.Rngs) -> DiT | UNetT:
  return DiT(cfg, rngs) if cfg.backbone == "dit" else UNetT(cfg, rngs)
