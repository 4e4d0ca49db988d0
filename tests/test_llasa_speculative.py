"""Speculative decoding (issue #22): greedy gives the target's greedy tokens whatever the draft, and sampling
draws from the target's own distribution (a chi-square test on a tiny vocabulary, with the power to tell the
draft's distribution apart)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from jaxspeech.asr.text import Characters
from jaxspeech.llasa import generate, speculative, synthesis
from jaxspeech.llasa.model import Llama, LlamaConfig
from jaxspeech.llasa.vocab import LlasaVocab


def _lm(seed: int, layers: int, vocab: int, scale: float) -> Llama:
  """A random tiny Llama whose params are scaled up, so its next-token distributions are far from uniform."""
  model = Llama(LlamaConfig(vocab_size=vocab, hidden=32, layers=layers, heads=4, kv_heads=2, head_dim=8, mlp=64,
                            vocab_multiple=8), nnx.Rngs(seed))
  nnx.update(model, jax.tree.map(lambda x: x * scale, nnx.state(model, nnx.Param)))
  return model


@pytest.mark.parametrize("penalty", [1.2, 1.0])
def test_greedy_gives_the_targets_tokens(penalty):
  """Prompts of 3-12 tokens, one row ending at eos mid-way; a poor draft (most drafts refused), the target as
  its own draft (every draft kept: k + 1 tokens per target call)."""
  target, draft = _lm(0, 2, 50, 6.0), _lm(1, 1, 50, 6.0)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 49, n) for n in (7, 12, 3)]
  sampling = generate.Sampling(greedy=True, repetition_penalty=penalty)
  want, want_lengths = generate.generate(target, prompts, jax.random.PRNGKey(0), max_new_tokens=20, eos_id=49,
                                         sampling=sampling)
  assert 0 < want_lengths.min() < 20  # a row ends at eos
  for proposer, per_call in ((draft, (1.0, 1.5)), (target, (4.0, 4.0))):
    tokens, lengths, stats = speculative.speculate(target, proposer, prompts, jax.random.PRNGKey(1), k=3,
                                                   max_new_tokens=20, eos_id=49, sampling=sampling)
    np.testing.assert_array_equal(tokens, want)
    np.testing.assert_array_equal(lengths, want_lengths)
    assert per_call[0] <= stats["tokens_per_call"] <= per_call[1], stats


def _joint(model, prompt, vocab: int, sampling) -> np.ndarray:
  """P(t1, t2) (V, V) of `model`'s own sampling after `prompt`, computed exactly."""
  seen = jnp.zeros((1, vocab), bool).at[0, prompt].set(True)
  first = jax.nn.softmax(generate.process(model(jnp.asarray(prompt)[None])[0][:, -1], seen, sampling), -1)[0]
  rows = np.repeat(np.asarray(prompt)[None], vocab, 0)
  after = np.concatenate([rows, np.arange(vocab)[:, None]], 1)
  seen_V = seen.repeat(vocab, 0).at[jnp.arange(vocab), jnp.arange(vocab)].set(True)
  second = jax.nn.softmax(generate.process(model(jnp.asarray(after))[0][:, -1], seen_V, sampling), -1)
  return np.asarray(first[:, None] * second, np.float64)


def test_sampling_draws_from_the_targets_distribution():
  """6,000 rows of one prompt, k = 2, temperature 0.9, top-k 5 and repetition penalty 1.3: the first two tokens'
  joint counts fit the target's exact joint distribution (chi-square p > 1e-3) and not the draft's (p < 1e-9)."""
  vocab, rows = 6, 6000
  target, draft = _lm(0, 2, vocab, 2.5), _lm(1, 1, vocab, 2.5)
  sampling = generate.Sampling(temperature=0.9, top_k=5, repetition_penalty=1.3)
  prompt = np.array([1, 4, 2, 2, 5])
  tokens, _, stats = speculative.speculate(target, draft, [prompt] * rows, jax.random.PRNGKey(0), k=2,
                                           max_new_tokens=2, eos_id=-1, sampling=sampling)
  counts = np.bincount(tokens[:, 0] * vocab + tokens[:, 1], minlength=vocab * vocab)
  assert 0.2 < stats["accepted"] < 1.8, stats  # both rules at work: some drafts kept, some refused
  for model, fits in ((target, True), (draft, False)):
    expected = _joint(model, prompt, vocab, sampling).reshape(-1) * rows
    cells = expected > 0
    assert counts[~cells].sum() == 0 or not fits
    p_value = scipy.stats.chisquare(counts[cells], expected[cells] * counts[cells].sum() / expected[cells].sum()
                                    ).pvalue
    assert (p_value > 1e-3) if fits else (p_value < 1e-9), (fits, p_value)


def test_bad_requests_are_refused():
  target = _lm(0, 1, 50, 1.0)
  with pytest.raises(ValueError, match="vocab_size=40 is not the target's 50"):
    speculative.speculate(target, _lm(0, 1, 40, 1.0), [[1, 2]], jax.random.PRNGKey(0), k=2, max_new_tokens=4,
                          eos_id=0)
  with pytest.raises(ValueError, match="k=0"):
    speculative.speculate(target, target, [[1, 2]], jax.random.PRNGKey(0), k=0, max_new_tokens=4, eos_id=0)


def test_synthesis_with_a_draft_speaks_the_same_codes_greedily():
  """`synthesis.synthesize(generator=speculative.generator(draft, k))`, the path of `llasa synthesize --draft`."""
  vocab = LlasaVocab(text_vocab_size=Characters.vocab_size)
  cfg = LlamaConfig(vocab_size=vocab.size, hidden=32, layers=2, heads=2, kv_heads=1, head_dim=16, mlp=64)
  lm, draft = Llama(cfg, nnx.Rngs(0)), Llama(dataclasses.replace(cfg, layers=1), nnx.Rngs(1))
  common = dict(max_seconds=0.3, best_of=2, sampling=generate.Sampling(greedy=True))
  plain = synthesis.synthesize(lm, None, Characters(), vocab, "a test.", jax.random.PRNGKey(0), **common)
  drafted = synthesis.synthesize(lm, None, Characters(), vocab, "a test.", jax.random.PRNGKey(0),
                                 generator=speculative.generator(draft, 3), **common)
  assert len(plain.codes) == 15
  np.testing.assert_array_equal(drafted.codes, plain.codes)
