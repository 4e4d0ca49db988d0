"""Generation: greedy decoding (with repetition penalty, batched left-padded prompts, EOS) gives HF
`generate`'s tokens; sampling respects the top-k and top-p masks; voice-prompted synthesis returns codes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxspeech.llasa import generate
from jaxspeech.llasa.vocab import LlasaVocab
from tests.helpers.llama import hf_llama, ours_from


def hf_greedy(hf, prompt, max_new_tokens, penalty, eos_id) -> list[int]:
  with torch.no_grad():
    out = hf.generate(torch.tensor(np.asarray(prompt)[None]), attention_mask=torch.ones(1, len(prompt), dtype=int),
                      do_sample=False, max_new_tokens=max_new_tokens, repetition_penalty=penalty,
                      eos_token_id=eos_id, pad_token_id=eos_id)
  return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name, scan, penalty", [
    ("gqa2-llama3-rope-tied-vocab1003", False, 1.2),
    ("gqa4-headdim32-llama3-untied", True, 1.0),
])
def test_greedy_matches_hf_generate(name, scan, penalty):
  hf = hf_llama(name)
  model = ours_from(hf, scan_layers=scan)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, hf.config.vocab_size, n) for n in (7, 12, 3)]
  expected = [hf_greedy(hf, p, 16, penalty, eos_id=hf.config.vocab_size - 1) for p in prompts]
  tokens, lengths = generate.generate(model, prompts, jax.random.PRNGKey(0), max_new_tokens=16,
                                      eos_id=hf.config.vocab_size - 1,
                                      sampling=generate.Sampling(greedy=True, repetition_penalty=penalty))
  for row, want in enumerate(expected):
    assert tokens[row, :lengths[row]].tolist() == want, row


def test_greedy_stops_at_eos_as_hf_does():
  hf = hf_llama("gqa2-llama3-rope-tied-vocab1003")
  model = ours_from(hf)
  prompt = np.random.default_rng(1).integers(0, 1003, 9)
  free = hf_greedy(hf, prompt, 12, 1.2, eos_id=1002)
  eos = free[4]  # a token greedy decoding emits: make it the end token
  expected = hf_greedy(hf, prompt, 12, 1.2, eos_id=eos)
  tokens, lengths = generate.generate(model, [prompt], jax.random.PRNGKey(0), max_new_tokens=12, eos_id=eos,
                                      sampling=generate.Sampling(greedy=True))
  assert tokens[0, :lengths[0]].tolist() == expected and expected[-1] == eos and lengths[0] <= 5
  assert (tokens[0, lengths[0]:] == eos).all()


@pytest.mark.parametrize("greedy", [True, False])
def test_stream_gives_generates_tokens_chunk_by_chunk(greedy):
  hf = hf_llama("gqa2-llama3-rope-tied-vocab1003")
  model = ours_from(hf)
  prompt = np.random.default_rng(1).integers(0, 1003, 9)
  sampling = generate.Sampling(greedy=greedy, temperature=1.5)
  free = generate.generate(model, [prompt], jax.random.PRNGKey(3), max_new_tokens=23, eos_id=1002,
                           sampling=sampling)[0][0]
  for eos, whole in ((1002, 23), (int(free[13]), None)):   # runs to the limit; ends at a token it emits
    tokens, lengths = generate.generate(model, [prompt], jax.random.PRNGKey(3), max_new_tokens=23, eos_id=eos,
                                        sampling=sampling)
    chunks = list(generate.stream(model, prompt, jax.random.PRNGKey(3), max_new_tokens=23, eos_id=eos, chunk=5,
                                  sampling=sampling))
    assert np.concatenate(chunks).tolist() == tokens[0, :lengths[0]].tolist()
    assert all(len(c) == 5 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 5
    if whole:
      assert lengths[0] == whole and len(chunks) == 5
    else:
      assert chunks[-1][-1] == eos and lengths[0] <= 14


def test_repetition_penalty_is_hfs():
  logits = jnp.array([[2.0, -2.0, 1.0]])
  seen = jnp.array([[True, True, False]])
  np.testing.assert_allclose(generate.penalise(logits, seen, 1.2), [[2.0 / 1.2, -2.4, 1.0]], rtol=1e-6)


def test_sampling_respects_top_k_and_top_p():
  logits_1xV = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  seen = jnp.zeros((1, 5), bool)

  def draws(sampling):
    return np.asarray(jax.vmap(lambda k: generate.next_token(k, logits_1xV, seen, sampling)[0])(keys))

  top2 = draws(generate.Sampling(temperature=1.0, top_k=2, repetition_penalty=1.0))
  assert set(top2) == {1, 3}
  assert abs((top2 == 1).mean() - 0.4 / 0.7) < 0.03  # renormalised over the two kept tokens
  nucleus = draws(generate.Sampling(temperature=1.0, top_p=0.75, repetition_penalty=1.0))
  assert set(nucleus) == {1, 3, 4}  # 0.4 + 0.3 < 0.75: the third most likely (0.15) is still kept
  everything = draws(generate.Sampling(temperature=1.0, repetition_penalty=1.0))
  assert set(everything) == {0, 1, 2, 3, 4}


def test_voice_prompted_synthesis_returns_codes():
  vocab = LlasaVocab(text_vocab_size=900, num_speech_tokens=95)  # 900 + 8 + 95 = 1003 ids
  model = ours_from(hf_llama("gqa2-llama3-rope-tied-vocab1003"))
  codes = generate.synthesize_codes(model, vocab, [[5, 6, 7], [8]], jax.random.PRNGKey(0), max_new_tokens=10,
                                    ref_text_ids=[1, 2], ref_codes=[3, 4, 5])
  assert len(codes) == 2
  for c in codes:
    assert c.ndim == 1 and len(c) <= 10 and ((0 <= c) & (c < 95)).all()
