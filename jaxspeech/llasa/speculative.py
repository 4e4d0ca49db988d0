"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft LM over the same vocabulary
proposes `k` tokens one at a time, the target scores all of them in one call, and the standard rejection rule
keeps a prefix: draft token d is kept with probability min(1, p(d) / q(d)); the first one refused is replaced
by a draw from the normalised max(0, p - q), and when all k are kept the target's next distribution gives one
more. Every round thus emits 1 to k + 1 tokens for one target call, and the tokens are distributed exactly as
the target's own sampling (`generate.generate`, same `Sampling`: the rule acts on the processed distributions,
repetition penalty included); greedy gives the target's greedy tokens.

Both models keep a `Cache` whose slots are appended every round (k + 1 each: the last emitted token and the
k drafts); slots of refused drafts get segment 0, so no later token sees them, and each row keeps its own
positions. Rows accept different numbers of tokens and advance independently.

    tokens_BxN, lengths_B, stats = speculate(target, draft, prompts, key, k=4, max_new_tokens=500, eos_id=eos)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.llasa.generate import Sampling, ended, left_pad, process
from jaxspeech.llasa.model import Cache


def _probs(logits_BxV, sampling: Sampling):
  """The distribution a processed row of logits is drawn from (greedy: one-hot at its argmax)."""
  if sampling.greedy:
    return jax.nn.one_hot(jnp.argmax(logits_BxV, -1), logits_BxV.shape[-1])
  return jax.nn.softmax(logits_BxV, -1)


def _forget(cache: Cache, first, keep_B, count: int) -> Cache:
  """Slots first + keep_B ... first + count - 1 of each row are refused drafts: segment 0, never seen again."""
  slot_S = jnp.arange(cache.segment_ids_BxS.shape[1])
  refused_BxS = (slot_S >= first + keep_B[:, None]) & (slot_S < first + count)
  return cache.replace(segment_ids_BxS=jnp.where(refused_BxS, 0, cache.segment_ids_BxS))


@functools.partial(jax.jit, static_argnames=("target_def", "draft_def", "k", "max_new_tokens", "eos_id", "sampling"))
def _speculate(target_def, target_state, draft_def, draft_state, ids_BxP, segment_ids_BxP, positions_BxP, last_B,
               key, *, k: int, max_new_tokens: int, eos_id: int, sampling: Sampling):
  target, draft = nnx.merge(target_def, target_state), nnx.merge(draft_def, draft_state)
  b, p = ids_BxP.shape
  rows_B = jnp.arange(b)
  slots = p + max_new_tokens * (k + 1)  # a round appends k + 1 slots and emits at least one token
  _, target_cache = target(ids_BxP, positions_BxP, segment_ids_BxP, Cache.empty(target.cfg, b, slots))
  _, draft_cache = draft(ids_BxP, positions_BxP, segment_ids_BxP, Cache.empty(draft.cfg, b, slots))
  seen_BxV = jnp.zeros((b, target.cfg.vocab_size), bool).at[rows_B[:, None], ids_BxP].max(segment_ids_BxP > 0)
  seen_BxV = seen_BxV.at[rows_B, last_B].set(True)
  ones_Bx1 = jnp.ones((b, 1), jnp.int32)

  def cond(carry):
    *_, count_B, done_B, _, _ = carry
    return ~(done_B | (count_B >= max_new_tokens)).all()

  def body(carry):
    target_cache, draft_cache, last_B, positions_B, seen_BxV, out_BxN, count_B, done_B, stats, key = carry
    key, draft_key, accept_key, extra_key = jax.random.split(key, 4)
    first = target_cache.index

    # the draft: k tokens, each drawn after feeding the one before; then the last draft fed too (its cache
    # then mirrors the target's k + 1 new slots)
    token_B, draft_seen_BxV, drafts, draft_probs = last_B, seen_BxV, [], []
    for i, sub in enumerate(jax.random.split(draft_key, k + 1)):
      logits_Bx1xV, draft_cache = draft(token_B[:, None], (positions_B + i)[:, None], ones_Bx1, draft_cache)
      if i == k:
        break
      processed_BxV = process(logits_Bx1xV[:, 0], draft_seen_BxV, sampling)
      token_B = (jnp.argmax(processed_BxV, -1) if sampling.greedy else
                 jax.random.categorical(sub, processed_BxV)).astype(jnp.int32)
      drafts.append(token_B)
      draft_probs.append(_probs(processed_BxV, sampling))
      draft_seen_BxV = draft_seen_BxV.at[rows_B, token_B].set(True)
    drafts_BxK, q_BxKxV = jnp.stack(drafts, 1), jnp.stack(draft_probs, 1)

    # the target: every draft scored in one call
    fed_BxK1 = jnp.concatenate([last_B[:, None], drafts_BxK], 1)
    logits_BxK1xV, target_cache = target(fed_BxK1, positions_B[:, None] + jnp.arange(k + 1),
                                         jnp.ones((b, k + 1), jnp.int32), target_cache)
    seen_K1xBxV = [seen_BxV]
    for i in range(k):
      seen_K1xBxV.append(seen_K1xBxV[-1].at[rows_B, drafts_BxK[:, i]].set(True))
    p_BxK1xV = jnp.stack([_probs(process(logits_BxK1xV[:, i], seen_K1xBxV[i], sampling), sampling)
                          for i in range(k + 1)], 1)

    # the rule: keep the longest prefix of accepted drafts, then one token from the residual or the bonus
    p_drafted_BxK = jnp.take_along_axis(p_BxK1xV[:, :k], drafts_BxK[..., None], -1)[..., 0]
    q_drafted_BxK = jnp.take_along_axis(q_BxKxV, drafts_BxK[..., None], -1)[..., 0]
    accepted_BxK = jax.random.uniform(accept_key, (b, k)) * q_drafted_BxK < p_drafted_BxK
    kept_B = jnp.cumprod(accepted_BxK, 1).sum(1)
    p_BxV = jnp.take_along_axis(p_BxK1xV, kept_B[:, None, None], 1)[:, 0]
    q_padded_BxK1xV = jnp.concatenate([q_BxKxV, jnp.zeros_like(q_BxKxV[:, :1])], 1)
    residual_BxV = jnp.maximum(p_BxV - jnp.take_along_axis(q_padded_BxK1xV, kept_B[:, None, None], 1)[:, 0], 0)
    residual_BxV = jnp.where(residual_BxV.sum(-1, keepdims=True) > 0, residual_BxV, p_BxV)
    extra_B = (jnp.argmax(residual_BxV, -1) if sampling.greedy else
               jax.random.categorical(extra_key, jnp.log(residual_BxV))).astype(jnp.int32)

    # emit drafts[:kept] and the extra token; stop a row at its first eos or its budget
    index_K1 = jnp.arange(k + 1)
    fresh_BxK1 = index_K1 <= kept_B[:, None]
    emitted_BxK1 = jnp.where(index_K1 < kept_B[:, None], jnp.concatenate([drafts_BxK, extra_B[:, None]], 1),
                             jnp.where(fresh_BxK1, extra_B[:, None], eos_id))
    live_B = ~done_B & (count_B < max_new_tokens)
    slot_BxK1 = jnp.where(live_B[:, None], count_B[:, None] + index_K1, out_BxN.shape[1])
    out_BxN = out_BxN.at[rows_B[:, None], slot_BxK1].set(emitted_BxK1, mode="drop")
    seen_BxV = seen_BxV.at[rows_B[:, None], emitted_BxK1].max(fresh_BxK1)
    done_B = done_B | ((emitted_BxK1 == eos_id) & fresh_BxK1).any(1)
    count_B = jnp.where(live_B, count_B + kept_B + 1, count_B)
    target_cache = _forget(target_cache, first, kept_B + 1, k + 1)
    draft_cache = _forget(draft_cache, first, kept_B + 1, k + 1)
    stats = stats + jnp.stack([live_B.sum(), jnp.where(live_B, kept_B, 0).sum()])
    return (target_cache, draft_cache, extra_B, positions_B + kept_B + 1, seen_BxV, out_BxN, count_B, done_B,
            stats, key)

  carry = (target_cache, draft_cache, last_B, positions_BxP[:, -1] + 1, seen_BxV,
           jnp.full((b, max_new_tokens + k + 1), eos_id, jnp.int32), jnp.zeros(b, jnp.int32), jnp.zeros(b, bool),
           jnp.zeros(2, jnp.int32), key)
  carry = jax.lax.while_loop(cond, body, carry)
  return carry[5][:, :max_new_tokens], carry[8]


def generator(draft, k: int):
  """`generate.generate`, drafting `k` tokens a round with `draft`: for `generate.synthesize_codes`."""
  def run(model, prompts: list, key: jax.Array, *, max_new_tokens: int, eos_id: int, sampling: Sampling = Sampling()):
    return speculate(model, draft, prompts, key, k=k, max_new_tokens=max_new_tokens, eos_id=eos_id,
                     sampling=sampling)[:2]
  return run


def speculate(target, draft, prompts: list, key: jax.Array, *, k: int, max_new_tokens: int, eos_id: int,
              sampling: Sampling = Sampling()) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
  """(tokens_BxN, lengths_B) as `generate.generate` gives them, and the rounds' statistics: `rounds` (row
  rounds), `accepted` (drafts kept per row round) and `tokens_per_call` (tokens emitted per target call)."""
  if k < 1:
    raise ValueError(f"k={k}: speculative decoding drafts at least one token")
  if draft.cfg.vocab_size != target.cfg.vocab_size:
    raise ValueError(f"the draft's vocab_size={draft.cfg.vocab_size} is not the target's {target.cfg.vocab_size}")
  if min(len(p) for p in prompts) < 2:
    raise ValueError("every prompt needs at least 2 tokens (the last one starts the first round)")
  target_def, target_state = nnx.split(target)
  draft_def, draft_state = nnx.split(draft)
  ids, segments, positions = left_pad([p[:-1] for p in prompts])
  last_B = np.asarray([p[-1] for p in prompts], np.int32)
  tokens_BxN, stats = _speculate(target_def, target_state, draft_def, draft_state, ids, segments, positions, last_B,
                                 key, k=k, max_new_tokens=max_new_tokens, eos_id=eos_id, sampling=sampling)
  rounds, accepted = (int(x) for x in np.asarray(stats))
  tokens_BxN, lengths_B = ended(np.asarray(tokens_BxN), eos_id)
  return tokens_BxN, lengths_B, {"rounds": rounds, "accepted": accepted / max(rounds, 1),
                                 "tokens_per_call": (accepted + rounds) / max(rounds, 1)}
