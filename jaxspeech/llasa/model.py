"""Llama (HF `LlamaForCausalLM` semantics) in Flax NNX: the Llasa speech LM.

Pre-norm decoder blocks: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)); RoPE (optionally with
Llama 3's frequency scaling) on q and k in HF's rotate-half layout (dims i and i + K/2 form a pair);
grouped-query attention; embeddings tied to the output head or not.

Rows may be packed: `segment_ids_BxL` (0 = padding) and per-segment `positions_BxL` make the attention
block-diagonal and causal, so no token sees another segment. The embedding table is padded to a multiple of
`vocab_multiple` rows so the vocab axis shards evenly; logits come back for the `vocab_size` real ids only.

Decoding passes a `Cache` (preallocated keys/values of every layer): the call writes its L new keys at
`cache.index` and attends to every filled slot of the same segment at or before its own slot.
"""

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.nn import layers, splash
from jaxspeech.sharding import constrain

BLOCK_AXES = ("activation_batch", "activation_length", "activation_embed")
@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int = 193_800
  hidden: int = 2048
  layers: int = 16
  heads: int = 32
  kv_heads: int = 8
  head_dim: int = 64
  mlp: int = 8192
  rms_eps: float = 1e-5
  rope_theta: float = 500_000.0
  # Llama 3 RoPE scaling; rope_factor 0 = plain RoPE
  rope_factor: float = 0.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  tie_embeddings: bool = True
  vocab_multiple: int = 128
  scan_layers: bool = False
  remat: str = "none"             # "none", "full" or "save_dots" (jax.checkpoint_policies)
  dtype: str = "float32"          # compute dtype; params stay float32
  attention: str = "auto"         # "auto": Pallas splash attention on TPU, XLA's elsewhere; "xla": XLA's everywhere

  @property
  def padded_vocab(self) -> int:
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  def validate(self) -> None:
    problems = []
    if self.heads % self.kv_heads:
      problems.append(f"heads={self.heads} is not a multiple of kv_heads={self.kv_heads}")
    if self.head_dim % 2:
      problems.append(f"head_dim={self.head_dim} must be even for RoPE")
    if self.remat not in layers.REMAT_POLICIES:
      problems.append(f"remat={self.remat!r}; choose one of {sorted(layers.REMAT_POLICIES)}")
    if self.attention not in ("auto", "xla"):
      problems.append(f"attention={self.attention!r}; choose 'auto' or 'xla'")
    if problems:
      raise ValueError(f"LlamaConfig: {'; '.join(problems)}")


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
  """Inverse frequencies (K/2,) float32, with Llama 3's scaling when `rope_factor` > 0 (as HF's "llama3")."""
  inv_freq = layers.rope_inv_freq(cfg.head_dim, cfg.rope_theta)
  if not cfg.rope_factor:
    return inv_freq
  factor, low, high, old = (cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                            cfg.rope_original_max_positions)
  wavelen = 2 * np.pi / inv_freq
  # long wavelengths are divided by `factor`, short ones kept, the band between interpolated
  scaled = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
  smooth = (old / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old / high) & (wavelen <= old / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


@flax.struct.dataclass
class Cache:
  """Keys and values of every layer for S slots; `segment_ids_BxS` is 0 for slots not (yet) filled."""
  k_NxBxSxGxK: jax.Array
  v_NxBxSxGxK: jax.Array
  segment_ids_BxS: jax.Array
  index: jax.Array                # int32 scalar: the slot the next call writes first

  @classmethod
  def empty(cls, cfg: LlamaConfig, batch: int, slots: int) -> "Cache":
    shape = (cfg.layers, batch, slots, cfg.kv_heads, cfg.head_dim)
    return cls(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype), jnp.zeros((batch, slots), jnp.int32),
               jnp.zeros((), jnp.int32))


def rms_norm(features: int, cfg: LlamaConfig, rngs: nnx.Rngs) -> nnx.RMSNorm:
  return layers.rms_norm(features, epsilon=cfg.rms_eps, dtype=jnp.dtype(cfg.dtype), rngs=rngs)


class Attention(nnx.Module):
  def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
    d, k, dtype = cfg.hidden, cfg.head_dim, jnp.dtype(cfg.dtype)
    common = dict(rngs=rngs, dtype=dtype, use_bias=False)
    self.q = layers.dense(d, (cfg.heads, k), ("embed", "heads", "kv"), **common)
    self.k = layers.dense(d, (cfg.kv_heads, k), ("embed", "kv_heads", "kv"), **common)
    self.v = layers.dense(d, (cfg.kv_heads, k), ("embed", "kv_heads", "kv"), **common)
    self.o = layers.dense((cfg.heads, k), d, ("heads", "kv", "embed"), **common)
    self.cfg = cfg

  def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS, segment_ids_BxL, past=None, slot=None):
    """(out, this call's (keys, values) when decoding): with `past`, a layer's cached (keys, values) of S slots,
    the L new keys/values are placed at `slot` and attention runs over all S slots. Without a mask (TPU, no
    cache) the splash kernel attends block-diagonally and causally over `segment_ids_BxL`."""
    angles_BxLxK2 = positions_BxL[..., None].astype(jnp.float32) * rope_inv_freq(self.cfg)
    q_BxLxHxK = layers.apply_rope(self.q(x_BxLxD), angles_BxLxK2)
    q_BxLxHxK = constrain(q_BxLxHxK, ("activation_batch", "activation_length", "activation_heads", "kv"))
    k_BxLxGxK = layers.apply_rope(self.k(x_BxLxD), angles_BxLxK2)
    v_BxLxGxK = self.v(x_BxLxD)
    new = None
    k_BxSxGxK, v_BxSxGxK = k_BxLxGxK, v_BxLxGxK
    if past is not None:
      k_cache, v_cache = past
      new = (k_BxLxGxK.astype(k_cache.dtype), v_BxLxGxK.astype(v_cache.dtype))
      k_BxSxGxK = jax.lax.dynamic_update_slice_in_dim(k_cache, new[0], slot, axis=1)
      v_BxSxGxK = jax.lax.dynamic_update_slice_in_dim(v_cache, new[1], slot, axis=1)
    k_BxSxGxK, v_BxSxGxK = k_BxSxGxK.astype(q_BxLxHxK.dtype), v_BxSxGxK.astype(q_BxLxHxK.dtype)
    if mask_BxLxS is None:
      out_BxLxHxK = splash.attention(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, segment_ids_BxL, causal=True)
    else:
      out_BxLxHxK = jax.nn.dot_product_attention(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, mask=mask_BxLxS[:, None])
    return self.o(out_BxLxHxK), new


class Block(nnx.Module):
  def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.attn_norm = rms_norm(cfg.hidden, cfg, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = rms_norm(cfg.hidden, cfg, rngs)
    self.gate = layers.dense(cfg.hidden, cfg.mlp, ("embed", "mlp"), rngs=rngs, dtype=dtype, use_bias=False)
    self.up = layers.dense(cfg.hidden, cfg.mlp, ("embed", "mlp"), rngs=rngs, dtype=dtype, use_bias=False)
    self.down = layers.dense(cfg.mlp, cfg.hidden, ("mlp", "embed"), rngs=rngs, dtype=dtype, use_bias=False)

  def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS, segment_ids_BxL, past=None, slot=None):
    h_BxLxD, new = self.attn(self.attn_norm(x_BxLxD), positions_BxL, mask_BxLxS, segment_ids_BxL, past, slot)
    x_BxLxD = x_BxLxD + h_BxLxD
    h_BxLxD = self.mlp_norm(x_BxLxD)
    h_BxLxM = constrain(jax.nn.silu(self.gate(h_BxLxD)) * self.up(h_BxLxD),
                        ("activation_batch", "activation_length", "activation_mlp"))
    return constrain(x_BxLxD + self.down(h_BxLxM), BLOCK_AXES), new


def attention_mask(q_segment_ids_BxL, k_segment_ids_BxS, q_slots_L):
  """True where query l may see key slot s: same segment, and s at or before l's slot (block-diagonal causal)."""
  same_BxLxS = q_segment_ids_BxL[:, :, None] == k_segment_ids_BxS[:, None, :]
  causal_LxS = jnp.arange(k_segment_ids_BxS.shape[1])[None, :] <= q_slots_L[:, None]
  return same_BxLxS & causal_LxS


class Llama(nnx.Module):
  def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.embed = nnx.Embed(
        cfg.padded_vocab, cfg.hidden, dtype=jnp.dtype(cfg.dtype), rngs=rngs,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")))
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.layers)
      @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def stack(rngs):
        return Block(cfg, rngs)
      self.blocks = stack(rngs)
    else:
      self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
    self.norm = rms_norm(cfg.hidden, cfg, rngs)
    if not cfg.tie_embeddings:
      self.lm_head = layers.dense(cfg.hidden, cfg.padded_vocab, ("embed", "vocab"), rngs=rngs,
                                  dtype=jnp.dtype(cfg.dtype), use_bias=False)

  def _run_blocks(self, x_BxLxD, positions_BxL, mask_BxLxS, segment_ids_BxL, cache: Cache | None):
    """(output, every layer's new (keys, values) (N, B, L, G, K) when decoding, else None).

    The cache is only read here (a layer's slice each); the caller writes the new entries in one update, so a
    decode step moves the new tokens' keys, not the whole cache.
    """
    slot = None if cache is None else cache.index

    def layer(graphdef, x_BxLxD, state_and_past):
      state, past = state_and_past
      return nnx.merge(graphdef, state)(x_BxLxD, positions_BxL, mask_BxLxS, segment_ids_BxL, past, slot)

    if self.cfg.remat != "none":
      layer = jax.checkpoint(layer, policy=layers.REMAT_POLICIES[self.cfg.remat], static_argnums=0)
    past = None if cache is None else (cache.k_NxBxSxGxK, cache.v_NxBxSxGxK)
    if self.cfg.scan_layers:
      graphdef, state = nnx.split(self.blocks)
      return jax.lax.scan(functools.partial(layer, graphdef), x_BxLxD, (state, past))
    new = []
    for i, block in enumerate(self.blocks):
      graphdef, state = nnx.split(block)
      x_BxLxD, new_i = layer(graphdef, x_BxLxD, (state, None if past is None else (past[0][i], past[1][i])))
      new.append(new_i)
    return x_BxLxD, None if past is None else jax.tree.map(lambda *a: jnp.stack(a), *new)

  def __call__(self, ids_BxL: jax.Array, positions_BxL: jax.Array | None = None,
               segment_ids_BxL: jax.Array | None = None, cache: Cache | None = None
               ) -> tuple[jax.Array, Cache | None]:
    """(logits (B, L, vocab_size) float32, the cache with this call's keys/values, or None without one)."""
    x_BxLxD, cache = self.hidden_states(ids_BxL, positions_BxL, segment_ids_BxL, cache)
    return self.logits(x_BxLxD), cache

  def logits(self, x_BxLxD: jax.Array, float32: bool = True) -> jax.Array:
    """Logits (B, L, vocab_size) of final hidden states (any L: the loss may take a chunk of a row), in float32,
    or with `float32=False` in the compute dtype (the loss upcasts inside its reductions: no float32 copy)."""
    if self.cfg.tie_embeddings:
      logits_BxLxV = self.embed.attend(x_BxLxD)
    else:
      logits_BxLxV = self.lm_head(x_BxLxD)
    if float32:
      logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    logits_BxLxV = constrain(logits_BxLxV, ("activation_batch", "activation_length", "activation_vocab"))
    return logits_BxLxV[..., :self.cfg.vocab_size]

  def hidden_states(self, ids_BxL: jax.Array, positions_BxL: jax.Array | None = None,
                    segment_ids_BxL: jax.Array | None = None, cache: Cache | None = None
                    ) -> tuple[jax.Array, Cache | None]:
    """(final-norm hidden states (B, L, D), the cache with this call's keys/values, or None without one)."""
    b, length = ids_BxL.shape
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones((b, length), jnp.int32)
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    x_BxLxD = constrain(self.embed(ids_BxL), BLOCK_AXES)
    heads_BxLxHxK = jax.ShapeDtypeStruct((b, length, self.cfg.heads, self.cfg.head_dim), x_BxLxD.dtype)
    kv_BxLxGxK = jax.ShapeDtypeStruct((b, length, self.cfg.kv_heads, self.cfg.head_dim), x_BxLxD.dtype)
    if cache is None and self.cfg.attention == "auto" and layers.use_splash(heads_BxLxHxK, kv_BxLxGxK):
      mask_BxLxS = None
    elif cache is None:
      mask_BxLxS = attention_mask(segment_ids_BxL, segment_ids_BxL, jnp.arange(length))
    else:
      cache_segments_BxS = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids_BxS, segment_ids_BxL,
                                                               cache.index, axis=1)
      mask_BxLxS = attention_mask(segment_ids_BxL, cache_segments_BxS, cache.index + jnp.arange(length))
    x_BxLxD, new_kv = self._run_blocks(x_BxLxD, positions_BxL, mask_BxLxS, segment_ids_BxL, cache)
    x_BxLxD = self.norm(x_BxLxD)
    if cache is None:
      return x_BxLxD, None
    k_NxBxSxGxK, v_NxBxSxGxK = (jax.lax.dynamic_update_slice_in_dim(c, n, cache.index, axis=2) for c, n in
                                zip((cache.k_NxBxSxGxK, cache.v_NxBxSxGxK), new_kv))
    return x_BxLxD, Cache(k_NxBxSxGxK, v_NxBxSxGxK, cache_segments_BxS, cache.index + length)
