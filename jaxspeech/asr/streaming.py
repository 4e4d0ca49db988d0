"""Cache-aware streaming inference for a FastConformer trained with limited context (NeMo's cache-aware
streaming; `ASRConfig.streaming_problems` says what such a model needs).

Log-mel frames arrive in chunks of `chunk_frames(cfg)` (the attention chunk times the subsampling factor; the
look-ahead is the chunk itself). Each step carries, per conformer block, the last `att_context_left` frames'
attention keys and values and the conv module's last gated frames, and, for the causal subsampling, the last
input frames its first outputs read. The logits equal offline inference of the same model on the whole
utterance up to float rounding (tests/test_asr_streaming.py).

  stream = streaming.start(model, batch=1)
  step = streaming.compile_step(model)
  for mel_1xFxM, frames_1 in chunks:
    logits_1xCxV, valid_1xC, stream = step(stream, mel_1xFxM, frames_1)
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.asr.model import ASRConfig, FastConformerCTC, output_lengths
from jaxspeech.asr.modules import relative_positions


class Stream(NamedTuple):
  """Everything a stream of B rows carries between chunks; rows advance together, each with its own length."""
  mel_BxRxM: jax.Array        # the last subsampling-receptive-field input frames
  keys: tuple                 # per block, (B, att_context_left, H, K)
  values: tuple
  conv: tuple                 # per block, the conv module's last gated frames (B, left, D)
  seen: jax.Array             # int32: input frames fed so far, padding of ended rows included (whole chunks)
  frames_B: jax.Array         # int32: each row's valid input frames so far


def chunk_frames(cfg: ASRConfig) -> int:
  """Log-mel frames per step."""
  return cfg.chunk * cfg.subsampling_factor


def check(cfg: ASRConfig) -> None:
  problems = cfg.streaming_problems()
  if problems:
    raise ValueError(f"this asr model cannot stream (train one with configs/asr.py:tiny_streaming): "
                     f"{'; '.join(problems)}")


def start(model: FastConformerCTC, batch: int) -> Stream:
  """An empty stream: no frame seen, every cache entry before the rows' first frame."""
  cfg = model.cfg
  check(cfg)
  dtype = jnp.dtype(cfg.dtype)
  heads, d = cfg.num_attention_heads, cfg.hidden_size
  def zeros(*shape):  # one buffer each: the jitted step donates them
    return tuple(jnp.zeros(shape, dtype) for _ in model.blocks)

  kv = (batch, cfg.att_context_left, heads, d // heads)
  return Stream(jnp.zeros((batch, model.subsampling.receptive_field, cfg.num_mel_bins), dtype), zeros(*kv),
                zeros(*kv), zeros(batch, model.blocks[0].conv.left, d), jnp.zeros((), jnp.int32),
                jnp.zeros((batch,), jnp.int32))


def step(model: FastConformerCTC, stream: Stream, mel_BxFxM: jax.Array, frames_B: jax.Array):
  """(CTC logits (B, C, V) float32, valid (B, C), the next stream) for the next `chunk_frames` log-mel frames,
  of which each row's first `frames_B` are valid (fewer only in a row's last chunk; 0 after it)."""
  cfg = model.cfg
  chunk, left, factor = cfg.chunk, cfg.att_context_left, cfg.subsampling_factor
  window_BxWxM = jnp.concatenate([stream.mel_BxRxM, mel_BxFxM.astype(stream.mel_BxRxM.dtype)], 1)
  cached = stream.mel_BxRxM.shape[1]
  total_B = stream.frames_B + frames_B
  x_BxCxD = model.subsampling(window_BxWxM, total_B, first=stream.seen - cached)[:, cached // factor:]
  if cfg.scale_input:
    x_BxCxD = x_BxCxD * math.sqrt(cfg.hidden_size)
  outputs_B = output_lengths(total_B, cfg)
  first = stream.seen // factor
  valid_BxC = first + jnp.arange(chunk) < outputs_B[:, None]
  key_M = first - left + jnp.arange(left + chunk)
  keys_valid_BxM = (key_M >= 0) & (key_M < outputs_B[:, None])
  pairs_BxCxM = valid_BxC[:, :, None] & keys_valid_BxM[:, None, :]
  pos_PxD = relative_positions(left + chunk, cfg.hidden_size, chunk).astype(x_BxCxD.dtype)
  caches = []
  for block, cache in zip(model.blocks, zip(stream.keys, stream.values, stream.conv)):
    x_BxCxD, cache = block.step(x_BxCxD, pos_PxD, valid_BxC, pairs_BxCxM, cache)
    caches.append(cache)
  keys, values, conv = (tuple(c) for c in zip(*caches))
  logits_BxCxV = model.ctc_head(x_BxCxD).astype(jnp.float32)
  nxt = Stream(window_BxWxM[:, window_BxWxM.shape[1] - cached:], keys, values, conv,
               stream.seen + mel_BxFxM.shape[1], total_B)
  return logits_BxCxV, valid_BxC, nxt


def compile_step(model: FastConformerCTC):
  """`step` jitted over the model's weights: (stream, mel_BxFxM, frames_B) -> (logits, valid, stream)."""
  check(model.cfg)
  graphdef, state = nnx.split(model)

  @functools.partial(jax.jit, donate_argnums=1)
  def run(state, stream, mel_BxFxM, frames_B):
    return step(nnx.merge(graphdef, state), stream, mel_BxFxM, frames_B)

  return functools.partial(run, state)


def run(model: FastConformerCTC, mel_BxTxM: np.ndarray, frames_B: np.ndarray, step_fn=None):
  """Whole utterances fed chunk by chunk: (logits (B, N, V), valid (B, N)) as numpy, N a whole number of chunks."""
  step_fn = step_fn or compile_step(model)
  size = chunk_frames(model.cfg)
  b, t, m = mel_BxTxM.shape
  padded_BxTxM = np.zeros((b, -(-t // size) * size, m), np.float32)
  padded_BxTxM[:, :t] = mel_BxTxM
  stream, logits, valid = start(model, b), [], []
  for begin in range(0, padded_BxTxM.shape[1], size):
    fed_B = np.clip(np.asarray(frames_B) - begin, 0, size).astype(np.int32)
    logits_BxCxV, valid_BxC, stream = step_fn(stream, padded_BxTxM[:, begin:begin + size], fed_B)
    logits.append(np.asarray(logits_BxCxV))
    valid.append(np.asarray(valid_BxC))
  return np.concatenate(logits, 1), np.concatenate(valid, 1)
