"""Jitted generation: one prefill of the (left-padded) prompts, then a `lax.while_loop` of one-token steps over
a preallocated KV cache, until every row has emitted `eos_id` or `max_new_tokens` tokens.

Logits are processed as HF `generate` does: repetition penalty over every token seen so far (prompt included),
then temperature, top-k and top-p (`Sampling`; Llasa's defaults are 0.8 / off / 1.0 / 1.2). Greedy decoding
takes the argmax of the penalised logits.

    tokens_BxN, lengths_B = generate(model, [prompt_a, prompt_b], key, max_new_tokens=500,
                                     eos_id=vocab.special("SPEECH_GENERATION_END"))
"""

import dataclasses
import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.llasa import objective, prepack
from jaxspeech.llasa.model import Cache
from jaxspeech.llasa.vocab import LlasaVocab

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 0.8
  top_k: int = 0                  # 0 = off
  top_p: float = 1.0              # 1.0 = off
  repetition_penalty: float = 1.2
  greedy: bool = False


def penalise(logits_BxV: jax.Array, seen_BxV: jax.Array, penalty: float) -> jax.Array:
  """CTRL's repetition penalty (HF's): seen tokens' logits divided by `penalty` when positive, else multiplied."""
  if penalty == 1.0:
    return logits_BxV
  return jnp.where(seen_BxV, jnp.where(logits_BxV < 0, logits_BxV * penalty, logits_BxV / penalty), logits_BxV)


def top_k_mask(logits_BxV: jax.Array, k: int) -> jax.Array:
  kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, -1:]
  return jnp.where(logits_BxV < kth_Bx1, NEG_INF, logits_BxV)


def top_p_mask(logits_BxV: jax.Array, p: float) -> jax.Array:
  """Keeps the most likely tokens whose preceding (more likely) mass is below `p`; the top token always stays."""
  order_BxV = jnp.argsort(-logits_BxV, axis=-1)
  probs_BxV = jax.nn.softmax(jnp.take_along_axis(logits_BxV, order_BxV, -1), axis=-1)
  drop_sorted_BxV = jnp.cumsum(probs_BxV, -1) - probs_BxV >= p
  drop_BxV = jnp.zeros_like(drop_sorted_BxV).at[jnp.arange(logits_BxV.shape[0])[:, None], order_BxV].set(
      drop_sorted_BxV)
  return jnp.where(drop_BxV, NEG_INF, logits_BxV)


def process(logits_BxV: jax.Array, seen_BxV: jax.Array, sampling: Sampling) -> jax.Array:
  """The logits `next_token` draws from (greedy: takes the argmax of): penalised, then for sampling divided by
  the temperature and cut to the top k and top p."""
  logits_BxV = penalise(logits_BxV, seen_BxV, sampling.repetition_penalty)
  if sampling.greedy:
    return logits_BxV
  logits_BxV = logits_BxV / sampling.temperature
  if sampling.top_k:
    logits_BxV = top_k_mask(logits_BxV, sampling.top_k)
  if sampling.top_p < 1.0:
    logits_BxV = top_p_mask(logits_BxV, sampling.top_p)
  return logits_BxV


def next_token(key: jax.Array, logits_BxV: jax.Array, seen_BxV: jax.Array, sampling: Sampling) -> jax.Array:
  logits_BxV = process(logits_BxV, seen_BxV, sampling)
  if sampling.greedy:
    return jnp.argmax(logits_BxV, -1).astype(jnp.int32)
  return jax.random.categorical(key, logits_BxV).astype(jnp.int32)


def left_pad(prompts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids_BxP, segment_ids_BxP, positions_BxP): prompts right-aligned, padding in segment 0."""
  width = max(len(p) for p in prompts)
  ids = np.zeros((len(prompts), width), np.int32)
  segments = np.zeros((len(prompts), width), np.int32)
  for row, prompt in enumerate(prompts):
    ids[row, width - len(prompt):] = prompt
    segments[row, width - len(prompt):] = 1
  positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
  return ids, segments, positions


def padded_prefill(model, ids_BxP, segment_ids_BxP, positions_BxP, slots: int) -> tuple[jax.Array, Cache]:
  """(each row's last logits (B, vocab_size), a cache of `slots` slots per row, the prompts in the first P)."""
  cache = Cache.empty(model.cfg, ids_BxP.shape[0], slots)
  x_BxPxD, cache = model.hidden_states(ids_BxP, positions_BxP, segment_ids_BxP, cache)
  return model.logits(x_BxPxD[:, -1:])[:, 0], cache


class Decoding(NamedTuple):
  """The decode loop's state between calls: steps taken, the next logits, the cache, the tokens seen, the new
  tokens so far (B, max_new_tokens), the next positions, which rows have ended, the key."""
  step: jax.Array
  logits_BxV: jax.Array
  cache: Cache
  seen_BxV: jax.Array
  out_BxN: jax.Array
  positions_B: jax.Array
  done_B: jax.Array
  key: jax.Array


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_id"))
def _prefill(graphdef, state, ids_BxP, segment_ids_BxP, positions_BxP, packed, key, *, max_new_tokens: int,
             eos_id: int) -> Decoding:
  """`packed` (a `prepack.Packed` of the same prompts, or None) replaces the left-padded prefill."""
  model = nnx.merge(graphdef, state)
  b, p = ids_BxP.shape
  if packed is None:
    logits_BxV, cache = padded_prefill(model, ids_BxP, segment_ids_BxP, positions_BxP, p + max_new_tokens)
  else:
    logits_BxV, cache = prepack.prefill(model, packed, segment_ids_BxP, p + max_new_tokens)
  seen_BxV = jnp.zeros((b, model.cfg.vocab_size), bool).at[jnp.arange(b)[:, None], ids_BxP].max(segment_ids_BxP > 0)
  return Decoding(jnp.zeros((), jnp.int32), logits_BxV, cache, seen_BxV,
                  jnp.full((b, max_new_tokens), eos_id, jnp.int32), positions_BxP[:, -1] + 1, jnp.zeros(b, bool), key)


@functools.partial(jax.jit, static_argnames=("graphdef", "eos_id", "sampling"), donate_argnames=("decoding",))
def _decode(graphdef, state, decoding: Decoding, until: jax.Array, *, eos_id: int, sampling: Sampling) -> Decoding:
  """One-token steps until `until` steps in all, or until every row has ended."""
  model = nnx.merge(graphdef, state)
  b = decoding.done_B.shape[0]
  rows_B = jnp.arange(b)

  def cond(d: Decoding):
    return (d.step < until) & ~d.done_B.all()

  def body(d: Decoding):
    key, sub = jax.random.split(d.key)
    token_B = jnp.where(d.done_B, eos_id, next_token(sub, d.logits_BxV, d.seen_BxV, sampling))
    logits_Bx1xV, cache = model(token_B[:, None], d.positions_B[:, None], jnp.ones((b, 1), jnp.int32), d.cache)
    return Decoding(d.step + 1, logits_Bx1xV[:, 0], cache, d.seen_BxV.at[rows_B, token_B].set(True),
                    d.out_BxN.at[:, d.step].set(token_B), d.positions_B + 1, d.done_B | (token_B == eos_id), key)

  return jax.lax.while_loop(cond, body, decoding)


def _start(model, prompts: list, key, max_new_tokens: int, eos_id: int, prefill: str):
  if prefill not in ("padded", "packed"):
    raise ValueError(f"prefill={prefill!r}; choose 'padded' or 'packed'")
  graphdef, state = nnx.split(model)
  ids, segments, positions = left_pad(prompts)
  packed = prepack.pack(prompts) if prefill == "packed" else None
  return graphdef, state, _prefill(graphdef, state, ids, segments, positions, packed, key,
                                   max_new_tokens=max_new_tokens, eos_id=eos_id)


def generate(model, prompts: list, key: jax.Array, *, max_new_tokens: int, eos_id: int,
             sampling: Sampling = Sampling(), prefill: str = "padded") -> tuple[np.ndarray, np.ndarray]:
  """(tokens_BxN, lengths_B): the new tokens of each prompt (`eos_id` after its end), and how many there are
  up to and including the first `eos_id` (N where none was emitted). `prefill="packed"` prefills the prompts
  packed into shared rows (`prepack`) instead of left-padded; decoding is the same."""
  graphdef, state, decoding = _start(model, prompts, key, max_new_tokens, eos_id, prefill)
  decoding = _decode(graphdef, state, decoding, jnp.int32(max_new_tokens), eos_id=eos_id, sampling=sampling)
  return ended(np.asarray(decoding.out_BxN), eos_id)


def stream(model, prompt, key: jax.Array, *, max_new_tokens: int, eos_id: int, chunk: int = 10,
           sampling: Sampling = Sampling()) -> Iterator[np.ndarray]:
  """`generate`'s tokens of one prompt, `chunk` at a time as they are decoded (the last up to and including
  `eos_id`, or the `max_new_tokens`-th): the same tokens, for a consumer that starts before the end (streaming
  synthesis)."""
  graphdef, state, decoding = _start(model, [prompt], key, max_new_tokens, eos_id, "padded")
  emitted = 0
  while emitted < max_new_tokens:
    decoding = _decode(graphdef, state, decoding, jnp.int32(min(emitted + chunk, max_new_tokens)), eos_id=eos_id,
                       sampling=sampling)
    step = int(decoding.step)   # the loop stops right after the step that emits eos_id
    yield np.asarray(decoding.out_BxN[0, emitted:step])
    emitted = step
    if bool(decoding.done_B[0]):
      return


def ended(tokens_BxN: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens with `eos_id` after each row's first, lengths up to and including it (N where there is none))."""
  eos_BxN = tokens_BxN == eos_id
  lengths_B = np.where(eos_BxN.any(1), eos_BxN.argmax(1) + 1, tokens_BxN.shape[1])
  return np.where(np.arange(tokens_BxN.shape[1]) < lengths_B[:, None], tokens_BxN, eos_id), lengths_B


def synthesize_codes(model, vocab: LlasaVocab, texts_ids: list, key: jax.Array, *, max_new_tokens: int,
                     ref_text_ids=(), ref_codes=(), sampling: Sampling = Sampling(),
                     generator=None) -> list[np.ndarray]:
  """Codec codes of each text, optionally continuing a reference clip's codes (voice prompting: the reference
  transcript precedes each text, and its codes start the speech). `generator` (default `generate`) takes
  `generate`'s arguments: `speculative.generator(draft, k)` drafts with a small LM."""
  prompts = [objective.prompt(vocab, ids, ref_text_ids, ref_codes) for ids in texts_ids]
  tokens_BxN, lengths_B = (generator or generate)(model, prompts, key, max_new_tokens=max_new_tokens,
                                                  eos_id=vocab.special("SPEECH_GENERATION_END"), sampling=sampling)
  return [vocab.ids_to_codes(tokens[:n]) for tokens, n in zip(tokens_BxN, lengths_B)]
