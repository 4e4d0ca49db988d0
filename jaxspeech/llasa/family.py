"""Llasa as a family: packed text + speech-code sequences, next-token loss on the speech part.

Data is a TFDS code dataset (`codes`: codec codes of one utterance, `text`: its transcript, bytes), as the
codec's tokenize job writes it. Transcripts are tokenized by `llasa.tokenizer`: a sentencepiece model, or an
HF `tokenizer.json` (the Llama tokenizer of an imported checkpoint). Its ids are the text vocabulary
(`llasa.text_vocab_size`); Llasa's specials and speech tokens follow.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxspeech.data import packing, per_step, pipeline, tfds_io
from jaxspeech.llasa import convert, objective
from jaxspeech.llasa.model import Cache, Llama, LlamaConfig
from jaxspeech.text import spm
from jaxspeech.llasa.vocab import LlasaVocab
from jaxspeech.train.family import Family


def model_config(cfg) -> LlamaConfig:
  return LlamaConfig(**cfg.model.to_dict())


def vocab(cfg) -> LlasaVocab:
  return LlasaVocab(cfg.llasa.text_vocab_size, cfg.llasa.num_speech_tokens)


def build_model(cfg, rngs):
  model_cfg = model_config(cfg)
  if "llasa" in cfg and model_cfg.vocab_size < vocab(cfg).size:
    raise ValueError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the Llasa vocabulary "
                     f"({vocab(cfg).size} = llasa.text_vocab_size + 8 + llasa.num_speech_tokens)")
  return Llama(model_cfg, rngs)


def _token_terms(model, batch, cfg):
  llasa = cfg.get("llasa", {})
  return objective.token_terms(model, batch, vocab(cfg), bool(llasa.get("train_text", False)),
                               int(llasa.get("loss_chunk", 0)))


def loss(model, batch, key, step, cfg):
  """Mean cross-entropy over the trained targets of the batch (`key` unused: no dropout)."""
  del key, step
  ce_BxL, correct_BxL, weights_BxL = _token_terms(model, batch, cfg)
  n = jnp.maximum(weights_BxL.sum(), 1.0)
  return (ce_BxL * weights_BxL).sum() / n, {"accuracy": (correct_BxL * weights_BxL).sum() / n,
                                             "trained_tokens": weights_BxL.sum()}


def evaluate(model, batch, cfg):
  ce_BxL, correct_BxL, weights_BxL = _token_terms(model, batch, cfg)
  n = weights_BxL.sum()
  return {"loss": ((ce_BxL * weights_BxL).sum(), n), "accuracy": ((correct_BxL * weights_BxL).sum(), n)}


class HFTokenizer:
  """An HF `tokenizer.json` (e.g. Llama 3's), encoding without its special tokens, as sentencepiece's `encode`."""

  def __init__(self, path: str):
    import tokenizers  # pylint: disable=import-outside-toplevel
    self.tokenizer = tokenizers.Tokenizer.from_file(path)
    self.vocab_size = self.tokenizer.get_vocab_size()

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids


def load_tokenizer(path: str) -> spm.Tokenizer | HFTokenizer:
  return HFTokenizer(path) if path.endswith(".json") else spm.Tokenizer.load(path)


def _rows(table_PxD: np.ndarray, old_vocab: int, new_vocab: int, padded: int) -> np.ndarray:
  """The first `old_vocab` rows, then rows up to `new_vocab` at their mean (as HF's `resize_token_embeddings`),
  then zero padding rows up to `padded`."""
  real_VxD = table_PxD[:min(old_vocab, new_vocab)]
  new_NxD = np.broadcast_to(real_VxD.mean(0), (max(new_vocab - old_vocab, 0), real_VxD.shape[1]))
  return np.concatenate([real_VxD, new_NxD, np.zeros((padded - max(new_vocab, len(real_VxD)), real_VxD.shape[1]))])


def adapt_init(loaded, source_config, cfg):
  """`train.init_from` a Llama/Llasa workdir (e.g. Llama 3.2 imported from HF): layers stacked or unstacked as
  this model has them, the vocabulary extended to Llasa's (new ids start at the mean embedding), and an untied
  head made from a tied embedding."""
  src, dst = LlamaConfig(**source_config["model"]), model_config(cfg)
  params = convert.unstack_layers(loaded) if src.scan_layers else dict(loaded)
  embedding = params["embed.embedding"]
  params["embed.embedding"] = _rows(embedding, src.vocab_size, dst.vocab_size, dst.padded_vocab)
  if not dst.tie_embeddings:
    head_PxD = embedding if src.tie_embeddings else params.pop("lm_head.kernel").T
    params["lm_head.kernel"] = _rows(head_PxD, src.vocab_size, dst.vocab_size, dst.padded_vocab).T
  elif not src.tie_embeddings:
    params.pop("lm_head.kernel")
  return convert.stack_layers(params, dst.layers) if dst.scan_layers else params


@dataclasses.dataclass(frozen=True)
class Tokenize:
  """A pipeline `map_fn`: a code-dataset record -> {"tokens": its Llasa training sequence}."""
  tokenizer_path: str
  vocab: LlasaVocab

  @functools.cached_property
  def tokenizer(self) -> spm.Tokenizer | HFTokenizer:
    tokenizer = load_tokenizer(self.tokenizer_path)
    if tokenizer.vocab_size > self.vocab.text_vocab_size:
      raise ValueError(f"{self.tokenizer_path} has {tokenizer.vocab_size} pieces; llasa.text_vocab_size is "
                       f"{self.vocab.text_vocab_size}")
    return tokenizer

  def __call__(self, record, rng):
    del rng
    text = record["text"].decode() if isinstance(record["text"], bytes) else str(record["text"])
    codes = np.asarray(record["codes"])
    if codes.dtype == np.int16:  # 65,536 codes stored as int16 wrap past 32,767: read the bits as unsigned
      codes = codes.view(np.uint16)
    codes = codes.astype(np.int64)
    return {"tokens": objective.sequence(self.vocab, self.tokenizer.encode(text), codes)}


def make_data(cfg, split, *, train, shard_index, shard_count):
  tfds_io.require_features(cfg.data.path, ("codes", "text"), "the llasa family",
                           hint="it trains on a codes dataset, as `jaxspeech codec encode` writes")
  packer = packing.Packing(cfg.llasa.seq_len, pipeline.host_batch_size(cfg, shard_count), drop_remainder=train)
  return pipeline.for_family(cfg, split, train=train, shard_index=shard_index, shard_count=shard_count,
                             map_fn=Tokenize(cfg.llasa.tokenizer, vocab(cfg)), batching=packer)


def batch_axes(cfg):
  rows, tokens = ("activation_batch",), ("activation_batch", "activation_length")
  return {"inputs": tokens, "targets": tokens, "segment_ids": tokens, "positions": tokens, "weights": tokens,
          "valid": rows}


def batch_shapes(cfg) -> dict[str, jax.ShapeDtypeStruct]:
  """A packed batch (`packing.Packing`): `train.batch_size` rows of `llasa.seq_len` tokens."""
  tokens, spec = (cfg.train.batch_size, cfg.llasa.seq_len), jax.ShapeDtypeStruct
  return {**{k: spec(tokens, jnp.int32) for k in ("inputs", "targets", "segment_ids", "positions")},
          "weights": spec(tokens, jnp.float32), "valid": spec(tokens[:1], jnp.bool_)}


def train_flops(cfg) -> float:
  """Forward + backward (3× forward) matmul FLOPs of one global batch. Causal attention counts half the square
  (q·kᵀ and P·v over the seq/2 keys a query sees on average, MaxText's convention); packed rows are counted
  as whole rows."""
  m, seq = model_config(cfg), cfg.llasa.seq_len
  tokens = cfg.train.batch_size * seq
  per_token = m.layers * (2 * m.hidden * m.head_dim * (2 * m.heads + 2 * m.kv_heads) + 2 * 3 * m.hidden * m.mlp
                          + 2 * 2 * (seq / 2) * m.heads * m.head_dim) + 2 * m.hidden * m.vocab_size
  return 3.0 * per_token * tokens


def inference(cfg) -> dict[str, tuple]:
  """Prefill of one microbatch of prompts (a quarter row each) into a cache of `llasa.seq_len` slots, and one
  decode step over the filled cache: the logits of each row's last position and the updated cache."""
  m, spec = model_config(cfg), jax.ShapeDtypeStruct
  rows, slots = cfg.train.batch_size // cfg.optim.accum_steps, cfg.llasa.seq_len
  cache = jax.eval_shape(lambda: Cache.empty(m, rows, slots))
  kv = (None, "activation_batch", None, "activation_heads", None)
  cache_axes = Cache(kv, kv, ("activation_batch", None), ())
  tokens, token_axes = ("activation_batch", None), ("ids", "positions", "segment_ids")

  def run(model, ids, positions, segment_ids, cache):
    logits_BxLxV, cache = model(ids, positions, segment_ids, cache)
    return logits_BxLxV[:, -1], cache

  def step_inputs(length):
    return ({**{k: spec((rows, length), jnp.int32) for k in token_axes}, "cache": cache},
            {**dict.fromkeys(token_axes, tokens), "cache": cache_axes})
  return {"prefill": (run, *step_inputs(slots // 4)), "decode step": (run, *step_inputs(1))}


def tokens_per_step(cfg) -> float:
  """The real (non-pad) tokens of a packed batch, measured on the run's first train batches."""
  return per_step.mean_units(cfg, make_data, units, "tokens")


def units(batch) -> dict[str, float]:
  return {"rows": float(np.asarray(batch["valid"]).sum()), "tokens": float((np.asarray(batch["segment_ids"]) > 0).sum())}


FAMILY = Family(
    name="llasa", build_model=build_model, loss=loss, evaluate=evaluate, make_data=make_data, batch_axes=batch_axes,
    train_flops=train_flops, units=units, tokens_per_step=tokens_per_step, adapt_init=adapt_init, batch_shapes=batch_shapes, inference=inference)
