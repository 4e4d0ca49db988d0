"""Llasa's sequence format and next-token loss.

One utterance is

    <|TEXT_UNDERSTANDING_START|> text <|TEXT_UNDERSTANDING_END|><|SPEECH_GENERATION_START|> codes <|SPEECH_GENERATION_END|>

and, as in Llasa's training (labels -100 before the speech start), only targets from
<|SPEECH_GENERATION_START|> onward are trained unless the text part is trained too. Packed rows
(`jaxspeech.data.packing`) pair each input with its own segment's next token, so no loss term crosses a
segment boundary, and the block-diagonal attention keeps segments from seeing each other.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.llasa.vocab import LlasaVocab


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


def _terms(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(cross-entropy, correct) of logits in any dtype. The log-sum-exp runs in float32 over the upcast logits,
  which XLA fuses into the reduction; the label's logit is picked from the logits as they are, so no float32
  copy of a (B, L, V) tensor exists (bf16 → float32 is exact: the values equal optax's on float32 logits)."""
  log_z_BxL = jax.nn.logsumexp(logits_BxLxV.astype(jnp.float32), axis=-1)
  label_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0].astype(jnp.float32)
  return log_z_BxL - label_BxL, (jnp.argmax(logits_BxLxV, -1) == targets_BxL).astype(jnp.float32)


def chunked_terms(model, x_BxLxD: jax.Array, targets_BxL: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
  """`_terms` of the head's logits, `chunk` positions of every row at a time (`lax.map` over the chunks, each
  rematerialised), so at most (B, chunk, V) float32 logits exist at once, in the forward and the backward pass."""
  b, length, d = x_BxLxD.shape
  n = -(-length // chunk)
  pad = n * chunk - length
  x_NxBxCxD = jnp.pad(x_BxLxD, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
  targets_NxBxC = jnp.pad(targets_BxL, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)
  graphdef, state = nnx.split(model)

  @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
  def chunk_terms(state, x_BxCxD, targets_BxC):
    return _terms(nnx.merge(graphdef, state).logits(x_BxCxD, float32=False), targets_BxC)

  ce_NxBxC, correct_NxBxC = jax.lax.map(lambda xs: chunk_terms(state, *xs), (x_NxBxCxD, targets_NxBxC))
  return tuple(t.swapaxes(0, 1).reshape(b, n * chunk)[:, :length] for t in (ce_NxBxC, correct_NxBxC))


def token_terms(model, batch, vocab: LlasaVocab, train_text: bool, loss_chunk: int = 0):
  """(cross-entropy_BxL, correct_BxL, weights_BxL) of a packed batch; weights are 0 where no loss is taken.

  `loss_chunk` > 0 computes the head and the loss that many positions at a time (`chunked_terms`)."""
  x_BxLxD, _ = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
  if loss_chunk:
    ce_BxL, correct_BxL = chunked_terms(model, x_BxLxD, batch["targets"], loss_chunk)
  else:
    ce_BxL, correct_BxL = _terms(model.logits(x_BxLxD, float32=False), batch["targets"])
  weights_BxL = batch["weights"]
  if not train_text:
    weights_BxL = weights_BxL * speech_targets(batch["targets"], vocab)
  return ce_BxL, correct_BxL, weights_BxL
