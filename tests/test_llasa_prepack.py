"""Prepacked prefill: prompts of 3 to 40 tokens packed into shared rows leave each prompt the keys, values and
last logits that a left-padded prefill leaves, and generation gives the left-padded generation's tokens, greedy
and sampled with the same key; with positions that do not restart, or without the block-diagonal mask, the
cached keys differ."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxspeech.data import packing
from jaxspeech.llasa import generate, prepack
from tests.helpers.llama import hf_llama, ours_from

LENGTHS = (40, 3, 17, 8, 25, 4, 33, 11, 29, 6)
GREEDY = generate.Sampling(greedy=True)


def _prompts(vocab_size: int) -> list:
  rng = np.random.default_rng(0)
  return [rng.integers(0, vocab_size, n) for n in LENGTHS]


def _both(model, prompts, sampling, eos_id, max_new_tokens=10):
  return [generate.generate(model, prompts, jax.random.PRNGKey(3), max_new_tokens=max_new_tokens, eos_id=eos_id,
                            sampling=sampling, prefill=prefill) for prefill in ("padded", "packed")]


def test_pack_holds_every_prompt_once_in_fewer_rows():
  prompts = _prompts(1000)
  packed = prepack.pack(prompts)
  ids_BxP, segment_ids_BxP, _ = generate.left_pad(prompts)
  assert packed.ids_RxT.shape == (5, 40)  # first-fit decreasing: 40 | 33 6 | 29 11 | 25 8 4 3 | 17
  gathered_BxP = packed.ids_RxT[packed.rows_B[:, None], packed.slots_BxP]
  np.testing.assert_array_equal(np.where(segment_ids_BxP > 0, gathered_BxP, 0), ids_BxP)
  positions_BxP = packed.positions_RxT[packed.rows_B[:, None], packed.slots_BxP]
  np.testing.assert_array_equal(positions_BxP[:, -1], np.array(LENGTHS) - 1)  # restarted in every segment
  assert (packed.segment_ids_RxT > 0).sum() == sum(LENGTHS)


@pytest.mark.parametrize("name, scan", [("gqa2-llama3-rope-tied-vocab1003", False),
                                        ("gqa4-headdim32-llama3-untied", True)])
def test_prefill_leaves_the_padded_prefills_cache_and_logits(name, scan):
  model = ours_from(hf_llama(name), scan_layers=scan)
  prompts = _prompts(model.cfg.vocab_size)
  ids_BxP, segment_ids_BxP, positions_BxP = generate.left_pad(prompts)
  want_BxV, want = generate.padded_prefill(model, ids_BxP, segment_ids_BxP, positions_BxP, 48)
  got_BxV, got = prepack.prefill(model, prepack.pack(prompts), segment_ids_BxP, 48)
  np.testing.assert_allclose(got_BxV, want_BxV, atol=1e-5)
  filled_1xBxSx1x1 = np.asarray(want.segment_ids_BxS > 0)[None, :, :, None, None]
  for got_kv, want_kv in ((got.k_NxBxSxGxK, want.k_NxBxSxGxK), (got.v_NxBxSxGxK, want.v_NxBxSxGxK)):
    assert got_kv.shape == want_kv.shape
    np.testing.assert_allclose(np.where(filled_1xBxSx1x1, got_kv, 0), np.where(filled_1xBxSx1x1, want_kv, 0),
                               atol=1e-5)
  np.testing.assert_array_equal(got.segment_ids_BxS, want.segment_ids_BxS)
  assert int(got.index) == int(want.index) == 40


@pytest.mark.parametrize("name, scan, penalty", [
    ("gqa2-llama3-rope-tied-vocab1003", False, 1.2),
    ("gqa2-llama3-rope-tied-vocab1003", False, 1.0),
    ("gqa4-headdim32-llama3-untied", True, 1.2),
    ("gqa4-headdim32-llama3-untied", True, 1.0),
])
def test_greedy_tokens_equal_padded_generation(name, scan, penalty):
  model = ours_from(hf_llama(name), scan_layers=scan)
  (want, want_lengths), (got, got_lengths) = _both(model, _prompts(model.cfg.vocab_size),
                                                   generate.Sampling(greedy=True, repetition_penalty=penalty),
                                                   eos_id=model.cfg.vocab_size - 1)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_lengths, want_lengths)


def test_rows_end_at_eos_as_padded_generation_does():
  model = ours_from(hf_llama("gqa2-llama3-rope-tied-vocab1003"))
  prompts = _prompts(model.cfg.vocab_size)
  free, _ = generate.generate(model, prompts, jax.random.PRNGKey(3), max_new_tokens=10, eos_id=1002,
                              sampling=GREEDY)
  eos = free[1, 3]  # a token greedy decoding emits: rows that emit it end early
  (want, want_lengths), (got, got_lengths) = _both(model, prompts, GREEDY, eos_id=eos)
  assert want_lengths.min() < 10
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_lengths, want_lengths)


def test_sampled_tokens_equal_padded_generation_with_the_same_key():
  model = ours_from(hf_llama("gqa4-headdim32-llama3-untied"), scan_layers=True)
  sampling = generate.Sampling(temperature=1.0, top_k=50, top_p=0.95, repetition_penalty=1.2)
  (want, _), (got, _) = _both(model, _prompts(model.cfg.vocab_size), sampling, eos_id=model.cfg.vocab_size - 1)
  np.testing.assert_array_equal(got, want)


def _no_restart(rows):
  return {**rows, "positions": np.broadcast_to(np.arange(rows["positions"].shape[1]), rows["positions"].shape)}


def _one_segment(rows):
  return {**rows, "segment_ids": (rows["segment_ids"] > 0).astype(np.int32)}


@pytest.mark.parametrize("wrong", [_no_restart, _one_segment])
def test_wrong_rows_give_other_keys(wrong, monkeypatch):
  """What the equalities above would catch. Positions that run on across a row shift a segment's queries and
  keys alike, which RoPE's relative angles hide from the prefill's own logits (and, over 10 steps, from these
  random models' greedy tokens), but not from the cached keys that decoding reads."""
  pack_sequences = packing.pack_sequences
  monkeypatch.setattr(packing, "pack_sequences", lambda *args: wrong(pack_sequences(*args)))
  model = ours_from(hf_llama("gqa2-llama3-rope-tied-vocab1003"))
  prompts = _prompts(model.cfg.vocab_size)
  ids_BxP, segment_ids_BxP, positions_BxP = generate.left_pad(prompts)
  packed = prepack.pack(prompts)
  _, want = generate.padded_prefill(model, ids_BxP, segment_ids_BxP, positions_BxP, 40)
  _, got = prepack.prefill(model, packed, segment_ids_BxP, 40)
  error_B = np.abs(np.where(segment_ids_BxP[None, :, :, None, None] > 0, got.k_NxBxSxGxK - want.k_NxBxSxGxK,
                            0)).max((0, 2, 3, 4))
  first_in_row_B = packed.slots_BxP[:, 0] == 0  # sees no other prompt and starts at position 0 either way
  assert (error_B[first_in_row_B] < 1e-5).all() and (error_B[~first_in_row_B] > 1e-2).all(), error_B


def test_unknown_prefill_is_refused():
  with pytest.raises(ValueError, match="prefill='ragged'"):
    generate.generate(nnx.Module(), [[1]], jax.random.PRNGKey(0), max_new_tokens=1, eos_id=0, prefill="ragged")
