"""Prepacked prefill (Zhao et al. 2024, "Prepacking"): prompts of different lengths share rows as segments
(`packing.pack_sequences`: block-diagonal attention, positions restarting at 0), so a prefill spends its compute
on prompt tokens rather than on left padding. The packed rows' keys and values are then moved into one decode
row per prompt, right-aligned as `generate.left_pad` lays the prompts out, so decoding goes on as after a
left-padded prefill.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxspeech.data import packing
from jaxspeech.llasa.model import Cache


@flax.struct.dataclass
class Packed:
  """The prefill's R rows of T slots, and where prompt b's left-padded slot p sits in them: row `rows_B[b]`,
  slot `slots_BxP[b, p]` (a slot of its own segment's first token where p is padding)."""
  ids_RxT: jax.Array
  segment_ids_RxT: jax.Array
  positions_RxT: jax.Array
  rows_B: jax.Array
  slots_BxP: jax.Array


def pack(prompts: list) -> Packed:
  """Rows as wide as the longest prompt, as few as first-fit decreasing finds."""
  lengths_B = np.array([len(p) for p in prompts])
  width = lengths_B.max()
  rows = packing.pack_sequences(prompts, width)
  hit_BxRxT = rows["index"][None] == np.arange(len(prompts))[:, None, None]
  rows_B, starts_B = hit_BxRxT.any(2).argmax(1), hit_BxRxT.any(1).argmax(1)
  slots_BxP = np.maximum(starts_B[:, None] + np.arange(width) - (width - lengths_B)[:, None], starts_B[:, None])
  return Packed(rows["inputs"], rows["segment_ids"], rows["positions"], rows_B.astype(np.int32),
                slots_BxP.astype(np.int32))


def prefill(model, packed: Packed, segment_ids_BxP: jax.Array, slots: int) -> tuple[jax.Array, Cache]:
  """(each prompt's last logits (B, vocab_size), a cache of `slots` slots per prompt whose first P hold its keys
  and values laid out as `segment_ids_BxP` (`generate.left_pad`'s) says, and whose next call writes slot P)."""
  r, t = packed.ids_RxT.shape
  x_RxTxD, cache = model.hidden_states(packed.ids_RxT, packed.positions_RxT, packed.segment_ids_RxT,
                                       Cache.empty(model.cfg, r, t))
  rows_Bx1, p = packed.rows_B[:, None], segment_ids_BxP.shape[1]

  def take(kv_NxRxTxGxK):
    kv_NxBxPxGxK = kv_NxRxTxGxK[:, rows_Bx1, packed.slots_BxP]
    return jnp.pad(kv_NxBxPxGxK, ((0, 0), (0, 0), (0, slots - p), (0, 0), (0, 0)))

  logits_BxV = model.logits(x_RxTxD[rows_Bx1, packed.slots_BxP[:, -1:]])[:, 0]
  return logits_BxV, Cache(take(cache.k_NxBxSxGxK), take(cache.v_NxBxSxGxK),
                           jnp.pad(segment_ids_BxP, ((0, 0), (0, slots - p))), jnp.asarray(p, jnp.int32))
