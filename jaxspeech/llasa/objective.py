"""Llasa's sequence format and next-token loss.

One utterance is

    <|TEXT_UNDERSTANDING_START|> text <|TEXT_UNDERSTANDING_END|><|SPEECH_GENERATION_START|> codes <|SPEECH_GENERATION_END|>

and, as in Llasa's training (labels -100 before the speech start), only targets from
<|SPEECH_GENERATION_START|> onward are trained unless the text part is trained too. Packed rows
(`jaxspeech.data.packing`) pair each input with its own segment's next token, so no loss term crosses a
segment boundary, and the block-diagonal attention keeps segments from seeing each other.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxspeech.text.llasa_vocab import LlasaVocab


def text_part(vocab: LlasaVocab, text_ids) -> list[int]:
  return [vocab.special("TEXT_UNDERSTANDING_START"), *map(int, text_ids), vocab.special("TEXT_UNDERSTANDING_END")]


def sequence(vocab: LlasaVocab, text_ids, codes) -> np.ndarray:
  """The training sequence of one utterance (int32)."""
  return np.asarray(text_part(vocab, text_ids) + [vocab.special("SPEECH_GENERATION_START"),
                                                  *vocab.codes_to_ids(codes), vocab.special("SPEECH_GENERATION_END")],
                    np.int32)


def prompt(vocab: LlasaVocab, text_ids, ref_text_ids=(), ref_codes=()) -> np.ndarray:
  """The generation prompt: the text (after a reference transcript), then the speech start and the reference codes.

  With a reference clip this is Llasa's voice prompting: the model continues the reference speaker's speech.
  """
  return np.asarray(text_part(vocab, [*ref_text_ids, *text_ids]) + [vocab.special("SPEECH_GENERATION_START"),
                                                                   *vocab.codes_to_ids(np.asarray(ref_codes, int))],
                    np.int32)


def speech_targets(targets_BxL: jax.Array, vocab: LlasaVocab) -> jax.Array:
  """True for targets of the speech part: the speech start and end tokens and the speech codes."""
  ids = targets_BxL
  return ((ids >= vocab.speech_start) & (ids < vocab.size)) | (ids == vocab.special("SPEECH_GENERATION_START")) | (
      ids == vocab.special("SPEECH_GENERATION_END"))


def token_terms(model, batch, vocab: LlasaVocab, train_text: bool):
  """(cross-entropy_BxL, correct_BxL, weights_BxL) of a packed batch; weights are 0 where no loss is taken."""
  logits_BxLxV, _ = model(batch["inputs"], batch["positions"], batch["segment_ids"])
  ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
  correct_BxL = (jnp.argmax(logits_BxLxV, -1) == batch["targets"]).astype(jnp.float32)
  weights_BxL = batch["weights"]
  if not train_text:
    weights_BxL = weights_BxL * speech_targets(batch["targets"], vocab)
  return ce_BxL, correct_BxL, weights_BxL
