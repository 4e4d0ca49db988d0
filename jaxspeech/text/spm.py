"""SentencePiece BPE tokenizers: training on transcripts, and loading."""

from collections.abc import Iterable
import io
import os

import sentencepiece as spm

from jaxspeech import storage


class Tokenizer:
  """A loaded SentencePiece model. `pad_id` 0, `unk_id` 1, `bos_id` 2, `eos_id` 3 when trained here."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Tokenizer":
    if not storage.exists(os.fspath(path)):
      raise FileNotFoundError(f"no sentencepiece model at {path}; train one with `jaxspeech text train`")
    return cls(storage.read_bytes(os.fspath(path)))

  def save(self, path: str | os.PathLike) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
      f.write(self.model_proto)
    os.replace(tmp, path)

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self.sp.pad_id()

  @property
  def bos_id(self) -> int:
    return self.sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self.sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    return self.sp.decode([int(i) for i in ids])


def train_bpe(texts: Iterable[str], vocab_size: int = 1024, character_coverage: float = 1.0) -> Tokenizer:
  """Trains a BPE model on `texts`. Single-threaded input order and fixed seeds make it deterministic."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=vocab_size,
      character_coverage=character_coverage, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      num_threads=1, shuffle_input_sentence=False, hard_vocab_limit=False, minloglevel=2)
  return Tokenizer(model.getvalue())
