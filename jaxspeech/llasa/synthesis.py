"""Text to speech with a Llasa LM workdir and a codec workdir: prompt, generate codes, decode, pick the best.

    lm, _ = load_workdir_model("workdirs/llasa_tiny", "llasa")
    codec, _ = load_workdir_model("workdirs/codec_tiny", "codec")
    result = synthesize(lm, codec, tokenizer, vocab, "Hello there.", jax.random.PRNGKey(0), best_of=4,
                        verifiers=[verify.LengthRepetition()])
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.convert import mapping, workdir
from jaxspeech.llasa import generate, verify
from jaxspeech.text.llasa_vocab import LlasaVocab


def load_workdir_model(path: str, family_name: str):
  """(model, config) of a workdir's newest checkpoint (its EMA when it has one), built without a random init."""
  from jaxspeech import registry  # pylint: disable=import-outside-toplevel
  checkpoint = workdir.read(path, family_name)
  cfg = workdir.train_config(family_name, checkpoint.model)
  model = nnx.eval_shape(lambda: registry.get(family_name).build_model(cfg, nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, mapping.unflatten(checkpoint.params))
  nnx.update(model, state)
  return model, cfg


@dataclasses.dataclass
class Result:
  wav: np.ndarray                          # the chosen candidate's audio (the reference clip not included)
  codes: np.ndarray
  scores: list[dict[str, float]]           # every candidate's verifier scores ([] with one candidate)
  chosen: int


def synthesize(lm, codec, tokenizer, vocab: LlasaVocab, text: str, key: jax.Array, *, ref_wav=None,
               ref_text: str = "", max_seconds: float = 30.0, best_of: int = 1, verifiers=(),
               sampling: generate.Sampling = generate.Sampling(), sample_rate: int = 16_000) -> Result:
  """Generates `best_of` candidates in one batch; with several, the verifiers' best is kept."""
  ref_codes = ()
  if ref_wav is not None:
    if getattr(codec, "semantic", False):
      raise ValueError("this codec has the semantic branch: encoding --ref-audio needs w2v-BERT features, "
                       "which synthesis does not compute; use an acoustic-only codec")
    ref_codes = np.asarray(codec.encode(jnp.asarray(ref_wav, jnp.float32)[None])[0])
  codes = generate.synthesize_codes(
      lm, vocab, [tokenizer.encode(text)] * best_of, key, max_new_tokens=int(max_seconds * verify.CODE_RATE),
      ref_text_ids=tokenizer.encode(ref_text) if ref_text else (), ref_codes=ref_codes, sampling=sampling)
  candidates = [verify.Candidate(text, c, np.asarray(codec.decode(jnp.asarray(c)[None])[0]) if len(c) else
                                 np.zeros(0, np.float32), sample_rate) for c in codes]
  if best_of == 1:
    return Result(candidates[0].wav, candidates[0].codes, [], 0)
  chosen, scores = verify.best_of_n(candidates, verifiers or [verify.LengthRepetition()])
  return Result(candidates[chosen].wav, candidates[chosen].codes, scores, chosen)
