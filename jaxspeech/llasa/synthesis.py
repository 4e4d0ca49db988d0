"""Text to speech with a Llasa LM workdir and a codec workdir: prompt, generate codes, decode, pick the best.

    lm, _ = Workdir("workdirs/llasa_tiny").load_model(llasa.family.FAMILY)
    codec, _ = Workdir("workdirs/codec_tiny").load_model(codec.family.FAMILY)   # the generator only
    result = synthesize(lm, codec, tokenizer, vocab, "Hello there.", jax.random.PRNGKey(0), best_of=4,
                        verifiers=[verify.LengthRepetition()])
"""

import dataclasses
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxspeech.codec import streaming
from jaxspeech.llasa import generate, objective, verify
from jaxspeech.llasa.vocab import LlasaVocab


def reference_codes(codec, ref_wav) -> np.ndarray:
  """The codec codes of a reference clip (none without one)."""
  if ref_wav is None:
    return np.zeros(0, np.int32)
  if getattr(codec, "semantic", False):
    raise ValueError("this codec has the semantic branch: encoding --ref-audio needs w2v-BERT features, "
                     "which synthesis does not compute; use an acoustic-only codec")
  return np.asarray(codec.encode(jnp.asarray(ref_wav, jnp.float32)[None])[0])


def _candidate(codec, text: str, codes: np.ndarray, sample_rate: int) -> verify.Candidate:
  """A candidate with its audio decoded (none without a codec: verifiers of codes only)."""
  wav = None
  if codec is not None:
    wav = np.asarray(codec.decode(jnp.asarray(codes)[None])[0]) if len(codes) else np.zeros(0, np.float32)
  return verify.Candidate(text, codes, wav, sample_rate)


@dataclasses.dataclass
class Result:
  wav: np.ndarray                          # the chosen candidate's audio (the reference clip not included)
  codes: np.ndarray
  scores: list[dict[str, float]]           # best-of-N: every candidate's verifier scores (else [])
  chosen: int


def synthesize(lm, codec, tokenizer, vocab: LlasaVocab, text: str, key: jax.Array, *, ref_wav=None,
               ref_text: str = "", max_seconds: float = 30.0, best_of: int = 1, verifiers=(),
               sampling: generate.Sampling = generate.Sampling(), sample_rate: int = 16_000,
               generator=None) -> Result:
  """Generates `best_of` candidates in one batch; with several, the verifiers' best is kept. `generator`: as
  `generate.synthesize_codes` takes it (speculative decoding with a draft LM)."""
  ref_codes = reference_codes(codec, ref_wav)
  codes = generate.synthesize_codes(
      lm, vocab, [tokenizer.encode(text)] * best_of, key, max_new_tokens=int(max_seconds * verify.CODE_RATE),
      ref_text_ids=tokenizer.encode(ref_text) if ref_text else (), ref_codes=ref_codes, sampling=sampling,
      generator=generator)
  candidates = [_candidate(codec, text, c, sample_rate) for c in codes]
  if best_of == 1:
    return Result(candidates[0].wav, candidates[0].codes, [], 0)
  chosen, scores = verify.best_of_n(candidates, verifiers or [verify.LengthRepetition()])
  return Result(candidates[chosen].wav, candidates[chosen].codes, scores, chosen)


def stream(lm, codec, tokenizer, vocab: LlasaVocab, text: str, key: jax.Array, *, ref_wav=None, ref_text: str = "",
           max_seconds: float = 30.0, sampling: generate.Sampling = generate.Sampling(), tokens_per_step: int = 10,
           chunk: int = 25, left: int = 150, lookahead: int = 2) -> Iterator[np.ndarray]:
  """`synthesize`'s audio (one candidate) as it is generated: the LM decodes `tokens_per_step` tokens at a time
  and the codec decodes each `chunk` of codes once its `lookahead` has come (`codec.streaming`), the reference
  clip's codes serving as left context."""
  ref_codes = reference_codes(codec, ref_wav)
  prompt = objective.prompt(vocab, tokenizer.encode(text), tokenizer.encode(ref_text) if ref_text else (), ref_codes)
  streamer = streaming.Streamer(codec, chunk=chunk, left=left, lookahead=lookahead, context=ref_codes)
  for tokens in generate.stream(lm, prompt, key, max_new_tokens=int(max_seconds * verify.CODE_RATE),
                                eos_id=vocab.special("SPEECH_GENERATION_END"), chunk=tokens_per_step,
                                sampling=sampling):
    yield from streamer.push(vocab.ids_to_codes(tokens))
  yield from streamer.flush()


def beam_search(lm, codec, tokenizer, vocab: LlasaVocab, text: str, key: jax.Array, *, verifiers, beams: int = 2,
                expand: int = 2, chunk_seconds: float = 1.0, max_seconds: float = 30.0, ref_wav=None,
                ref_text: str = "", sampling: generate.Sampling = generate.Sampling(),
                sample_rate: int = 16_000) -> Result:
  """Chunk-wise beam search (the Llasa paper's inference scaling): each round every kept beam samples `expand`
  continuations of `chunk_seconds` of codes in one batch; the verifiers score the prefixes so far and the best
  `beams` are kept. A beam that emits the end token is finished; the best finished (or, at `max_seconds`, kept)
  beam wins. `codec=None` skips decoding (for verifiers that read codes only)."""
  prompt = objective.prompt(vocab, tokenizer.encode(text), tokenizer.encode(ref_text) if ref_text else (),
                            reference_codes(codec, ref_wav))
  eos, chunk = vocab.special("SPEECH_GENERATION_END"), int(chunk_seconds * verify.CODE_RATE)
  kept, finished = [np.zeros(0, np.int32)], []
  for step in range(math.ceil(max_seconds / chunk_seconds)):
    prompts = [np.concatenate([prompt, prefix]) for prefix in kept for _ in range(expand)]
    tokens_BxN, lengths_B = generate.generate(lm, prompts, jax.random.fold_in(key, step), max_new_tokens=chunk,
                                              eos_id=eos, sampling=sampling)
    grown = [(np.concatenate([p[len(prompt):], t[:n]]), n < chunk or t[n - 1] == eos)
             for p, t, n in zip(prompts, tokens_BxN, lengths_B)]
    candidates = [_candidate(codec, text, vocab.ids_to_codes(ids), sample_rate) for ids, _ in grown]
    _, scores = verify.best_of_n(candidates, verifiers)
    order = np.argsort([-s["total"] for s in scores], kind="stable")[:beams]
    finished += [(scores[i]["total"], candidates[i]) for i in order if grown[i][1]]
    kept = [grown[i][0] for i in order if not grown[i][1]]
    if not kept:
      break
  if not finished:  # none ended within max_seconds: the best kept beam
    finished = [(scores[i]["total"], candidates[i]) for i in order]
  best = max(finished, key=lambda f: f[0])[1]
  return Result(best.wav, best.codes, [], 0)
