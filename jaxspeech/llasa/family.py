"""Llasa as a family: packed text + speech-code sequences, next-token loss on the speech part.

Data is a TFDS code dataset (`codes`: codec codes of one utterance, `text`: its transcript, bytes), as the
codec's tokenize job writes it. Transcripts are tokenized by the sentencepiece model `llasa.tokenizer`; its
ids are the text vocabulary (`llasa.text_vocab_size`), then come Llasa's specials and speech tokens.
"""

import dataclasses
import functools

import jax
import numpy as np

from jaxspeech.data import packing, pipeline, tfds_io
from jaxspeech.llasa import objective
from jaxspeech.llasa.model import Llama, LlamaConfig
from jaxspeech.text import spm
from jaxspeech.text.llasa_vocab import LlasaVocab
from jaxspeech.train.family import Family


def model_config(cfg) -> LlamaConfig:
  return LlamaConfig(**cfg.model.to_dict())


def vocab(cfg) -> LlasaVocab:
  return LlasaVocab(cfg.llasa.text_vocab_size, cfg.llasa.num_speech_tokens)


def build_model(cfg, rngs):
  return Llama(model_config(cfg), rngs)


def _train_text(cfg) -> bool:
  return bool(cfg.get("llasa", {}).get("train_text", False))


def loss(model, batch, key, cfg):
  """Mean cross-entropy over the trained targets of the batch (`key` unused: no dropout)."""
  del key
  ce_BxL, correct_BxL, weights_BxL = objective.token_terms(model, batch, vocab(cfg), _train_text(cfg))
  n = jax.numpy.maximum(weights_BxL.sum(), 1.0)
  return (ce_BxL * weights_BxL).sum() / n, {"accuracy": (correct_BxL * weights_BxL).sum() / n,
                                             "trained_tokens": weights_BxL.sum()}


def evaluate(model, batch, cfg):
  ce_BxL, correct_BxL, weights_BxL = objective.token_terms(model, batch, vocab(cfg), _train_text(cfg))
  n = weights_BxL.sum()
  return {"loss": ((ce_BxL * weights_BxL).sum(), n), "accuracy": ((correct_BxL * weights_BxL).sum(), n)}


@dataclasses.dataclass(frozen=True)
class Tokenize:
  """A pipeline `map_fn`: a code-dataset record -> {"tokens": its Llasa training sequence}."""
  tokenizer_path: str
  vocab: LlasaVocab

  @functools.cached_property
  def tokenizer(self) -> spm.Tokenizer:
    tokenizer = spm.Tokenizer.load(self.tokenizer_path)
    if tokenizer.vocab_size > self.vocab.text_vocab_size:
      raise ValueError(f"{self.tokenizer_path} has {tokenizer.vocab_size} pieces; llasa.text_vocab_size is "
                       f"{self.vocab.text_vocab_size}")
    return tokenizer

  def __call__(self, record, rng):
    del rng
    text = record["text"].decode() if isinstance(record["text"], bytes) else str(record["text"])
    codes = np.asarray(record["codes"]).astype(np.int64)
    return {"tokens": objective.sequence(self.vocab, self.tokenizer.encode(text), codes)}


def make_data(cfg, split, *, train, shard_index, shard_count):
  source = tfds_io.data_source(cfg.data.path, split)
  if cfg.train.batch_size % shard_count:
    raise ValueError(f"train.batch_size={cfg.train.batch_size} does not split over {shard_count} hosts")
  packer = packing.Packing(cfg.llasa.seq_len, cfg.train.batch_size // shard_count, drop_remainder=train)
  return pipeline.make_pipeline(
      source, seed=cfg.seed, map_fn=Tokenize(cfg.llasa.tokenizer, vocab(cfg)), batching=packer,
      shard_index=shard_index, shard_count=shard_count, shuffle=train, num_epochs=None if train else 1,
      worker_count=cfg.data.worker_count)


def batch_axes(cfg):
  rows, tokens = ("activation_batch",), ("activation_batch", "activation_length")
  return {"inputs": tokens, "targets": tokens, "segment_ids": tokens, "positions": tokens, "weights": tokens,
          "valid": rows}


def train_flops(cfg) -> float:
  """Forward + backward (3× forward) matmul FLOPs of one global batch, attention scores over the full row."""
  m, seq = model_config(cfg), cfg.llasa.seq_len
  tokens = cfg.train.batch_size * seq
  per_token = m.layers * (2 * m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads) + 2 * 3 * m.hidden * m.mlp
                          + 2 * 2 * seq * m.heads * m.head_dim) + 2 * m.hidden * m.vocab_size
  return 3.0 * per_token * tokens


def units(batch) -> dict[str, float]:
  return {"rows": float(np.asarray(batch["valid"]).sum()), "tokens": float((np.asarray(batch["segment_ids"]) > 0).sum())}


FAMILY = Family(
    name="llasa", build_model=build_model, loss=loss, evaluate=evaluate, make_data=make_data, batch_axes=batch_axes,
    train_flops=train_flops, units=units)
