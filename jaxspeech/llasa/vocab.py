"""The Llasa vocabulary: a text vocabulary, then 8 special tokens, then 65,536 speech tokens.

With a Llama-3 text vocabulary (128,256 ids) this reproduces Llasa's ids: the specials are
128256-128263 and `<|s_N|>` is 128264 + N, 193,800 ids in all.
"""

import dataclasses

import numpy as np

SPECIAL_TOKENS = (
    "<|TEXT_GENERATION_START|>", "<|TEXT_GENERATION_END|>",
    "<|TEXT_UNDERSTANDING_START|>", "<|TEXT_UNDERSTANDING_END|>",
    "<|SPEECH_GENERATION_START|>", "<|SPEECH_GENERATION_END|>",
    "<|SPEECH_UNDERSTANDING_START|>", "<|SPEECH_UNDERSTANDING_END|>",
)
NUM_SPEECH_TOKENS = 65_536  # FSQ levels [4]*8 → 4**8 codes
LLAMA3_TEXT_VOCAB = 128_256


def speech_token(code: int) -> str:
  return f"<|s_{code}|>"


@dataclasses.dataclass(frozen=True)
class LlasaVocab:
  """Id layout of a text vocabulary of `text_vocab_size` extended for Llasa."""
  text_vocab_size: int = LLAMA3_TEXT_VOCAB
  num_speech_tokens: int = NUM_SPEECH_TOKENS

  @property
  def special_start(self) -> int:
    return self.text_vocab_size

  @property
  def speech_start(self) -> int:
    return self.text_vocab_size + len(SPECIAL_TOKENS)

  @property
  def size(self) -> int:
    return self.speech_start + self.num_speech_tokens

  def special(self, name: str) -> int:
    """Id of a special token, given as "SPEECH_GENERATION_START" or "<|SPEECH_GENERATION_START|>"."""
    token = name if name.startswith("<|") else f"<|{name}|>"
    if token not in SPECIAL_TOKENS:
      raise KeyError(f"{name!r} is not a Llasa special token; they are {SPECIAL_TOKENS}")
    return self.special_start + SPECIAL_TOKENS.index(token)

  def codes_to_ids(self, codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= self.num_speech_tokens):
      raise ValueError(f"codec codes must lie in [0, {self.num_speech_tokens}); got [{codes.min()}, {codes.max()}]")
    return codes.astype(np.int32) + self.speech_start

  def ids_to_codes(self, ids: np.ndarray) -> np.ndarray:
    """Codes of the speech-token ids in `ids`; other ids (text, specials) are dropped."""
    ids = np.asarray(ids)
    speech = ids[self.is_speech(ids)]
    return (speech - self.speech_start).astype(np.int32)

  def is_speech(self, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return (ids >= self.speech_start) & (ids < self.size)

  def added_tokens(self) -> list[str]:
    """The tokens appended after the text vocabulary, in id order."""
    return list(SPECIAL_TOKENS) + [speech_token(i) for i in range(self.num_speech_tokens)]
