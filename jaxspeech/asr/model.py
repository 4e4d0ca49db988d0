"""FastConformer CTC in Flax NNX, as HF `ParakeetForCTC` (NeMo's Parakeet-CTC) computes it.

Log-mel frames (B, T, M) are subsampled 8x in time by depthwise-separable 2-D convs, scaled by √D
(`scale_input`), and run through macaron Conformer blocks: x + ½FFN(LN(x)), x + RelPosAttn(LN(x)),
x + Conv(LN(x)), x + ½FFN(LN(x)), then LN. A k=1 conv (a linear map) gives the CTC logits over
`vocab_size` classes, the last of which is the blank.

With `att_context_right` >= 0 it is NeMo's cache-aware streaming FastConformer ("Stateful Conformer with
cache-based inference", Noroozi et al. 2024): attention limited to the frame's chunk of `att_context_right` + 1
frames and `att_context_left` frames before it, a conv module that looks at most `conv_context_right` frames
ahead and never past its chunk, and a causal subsampling; trained as such, it runs chunk by chunk with caches
(`jaxspeech.asr.streaming`) to the same outputs.

Training (`deterministic=False`) needs `key` for dropout and layerdrop, and normalises the conv modules with
batch statistics. It writes the updated running statistics (`nnx.BatchStat`) back into the model; jaxspeech's
train step returns them with the model's `rest` (`jaxspeech.train.step`).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspeech.asr.modules import (ACTIVATIONS, ConvModule, FeedForward, RelPositionAttention, Subsampling,
                                   chunked_context, conv_length, relative_positions)
from jaxspeech.nn import layers
from jaxspeech.sharding import constrain

BLOCK_AXES = ("activation_batch", "activation_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class ASRConfig:
  """Fields and defaults as HF's `ParakeetEncoderConfig` and `ParakeetCTCConfig` (vocab_size), plus ours."""
  hidden_size: int = 1024
  intermediate_size: int = 4096
  num_hidden_layers: int = 24
  num_attention_heads: int = 8
  conv_kernel_size: int = 9
  subsampling_factor: int = 8
  subsampling_conv_channels: int = 256
  subsampling_conv_kernel_size: int = 3
  subsampling_conv_stride: int = 2
  num_mel_bins: int = 80
  attention_bias: bool = True
  convolution_bias: bool = True
  scale_input: bool = True
  max_position_embeddings: int = 5000   # recorded for HF; the sinusoids are computed for any length
  dropout: float = 0.1
  attention_dropout: float = 0.1
  activation_dropout: float = 0.1
  dropout_positions: float = 0.0
  vocab_size: int = 1025                # CTC classes including the blank (the last one)
  dtype: str = "float32"                # compute dtype; params stay float32
  remat: bool = False                   # jax.checkpoint each conformer block
  hidden_act: str = "silu"              # feed-forward and conv-module activation
  layerdrop: float = 0.1                # probability of skipping a whole block in training
  # cache-aware streaming, as NeMo's streaming FastConformer configs; the defaults are HF's offline model
  att_context_left: int = -1            # att_context_size[0]: earlier frames a frame sees (whole chunks); -1: all
  att_context_right: int = -1           # att_context_size[1]: chunks of right + 1 frames ('chunked_limited'); -1: none
  conv_context_right: int = -1          # the conv module's later taps, inside the chunk; -1: centred (HF)
  causal_downsampling: bool = False     # the subsampling convs see no later frame
  normalize_features: bool = True       # log-mel bins normalised over the utterance (HF); False: NeMo's "NA",
  feature_mean: float = 0.0             # then (log-mel - feature_mean) / feature_std, fixed for every utterance
  feature_std: float = 1.0

  @property
  def blank_id(self) -> int:
    """ParakeetForCTC's blank: `pad_token_id`, which its configs (and NeMo's CTC decoder) put at vocab_size - 1."""
    return self.vocab_size - 1

  @property
  def strided_convs(self) -> int:
    return int(math.log2(self.subsampling_factor))

  @property
  def chunk(self) -> int:
    """Encoder frames per attention chunk; 0 when attention is not chunked."""
    return self.att_context_right + 1

  def streaming_problems(self) -> list[str]:
    """What keeps this model from running chunk by chunk with the same outputs as offline (empty: nothing)."""
    problems = [f"{name}={getattr(self, name)} (needs ≥ 0)" for name in
                ("att_context_left", "att_context_right", "conv_context_right") if getattr(self, name) < 0]
    if not self.causal_downsampling:
      problems.append("causal_downsampling=False (needs True)")
    if self.normalize_features:
      problems.append("normalize_features=True (statistics of the whole utterance; needs False)")
    return problems

  def validate(self) -> None:
    problems = []
    if self.subsampling_factor < 2 or 2 ** self.strided_convs != self.subsampling_factor:
      problems.append(f"subsampling_factor={self.subsampling_factor} is not a power of 2")
    if self.hidden_size % self.num_attention_heads or self.hidden_size % 2:
      problems.append(f"hidden_size={self.hidden_size} is not an even multiple of "
                      f"num_attention_heads={self.num_attention_heads}")
    if self.conv_kernel_size % 2 == 0:
      problems.append(f"conv_kernel_size={self.conv_kernel_size} must be odd ('same' padding)")
    if self.att_context_right < 0 and (self.att_context_left >= 0 or self.conv_context_right >= 0):
      problems.append("att_context_left and conv_context_right need chunks: set att_context_right ≥ 0")
    if self.att_context_right >= 0 and self.att_context_left > 0 and self.att_context_left % self.chunk:
      problems.append(f"att_context_left={self.att_context_left} is not whole chunks of att_context_right + 1 = "
                      f"{self.chunk} frames")
    if self.conv_context_right >= self.conv_kernel_size:
      problems.append(f"conv_context_right={self.conv_context_right} must be below conv_kernel_size="
                      f"{self.conv_kernel_size}")
    if self.hidden_act not in ACTIVATIONS:
      problems.append(f"hidden_act={self.hidden_act!r}; choose one of {sorted(ACTIVATIONS)}")
    hf_bins = self.num_mel_bins // self.subsampling_conv_stride ** self.strided_convs
    if not problems and output_lengths(self.num_mel_bins, self) != hf_bins:  # the convs subsample frequency too
      problems.append(f"num_mel_bins={self.num_mel_bins} leaves {output_lengths(self.num_mel_bins, self)} bins "
                      f"after the subsampling; HF's linear expects {hf_bins}")
    if problems:
      raise ValueError(f"ASRConfig: {'; '.join(problems)}")


SIZES = {
    # trains on a CPU in minutes; vocab_size is the tokenizer's pieces + 1, set by whoever picks the tokenizer
    "tiny": ASRConfig(hidden_size=144, intermediate_size=576, num_hidden_layers=4, num_attention_heads=4,
                      subsampling_conv_channels=64, num_mel_bins=80, vocab_size=257, layerdrop=0.0),
    # tiny with NeMo's cache-aware streaming: chunks of 8 frames (320 ms at 4× subsampling, the look-ahead),
    # 48 frames (1.92 s) of left context, causal conv module and subsampling, features standardised by the
    # corpus's log-mel mean and std (-9.8, 4.2) instead of each utterance's
    "tiny_streaming": ASRConfig(hidden_size=144, intermediate_size=576, num_hidden_layers=4, num_attention_heads=4,
                                subsampling_conv_channels=64, num_mel_bins=80, vocab_size=257, layerdrop=0.0,
                                att_context_left=48, att_context_right=7, conv_context_right=0,
                                causal_downsampling=True, normalize_features=False, feature_mean=-10.0,
                                feature_std=4.0),
    # nvidia/parakeet-ctc-0.6b: FastConformer, 24 layers, d_model 1024, 8 heads, FFN 4x, conv kernel 9, 8x
    # dw-striding subsampling with 256 channels, 80 mels, 1024 BPE pieces + blank (NeMo's
    # fast-conformer_ctc_bpe config; the HF converter's ParakeetCTCConfig defaults); no stochastic depth
    "parakeet_ctc_0.6b": ASRConfig(layerdrop=0.0),
}


def output_lengths(lengths_B, cfg: ASRConfig):
  """Valid frames after the subsampling for `lengths_B` valid input frames (HF's formula; numpy, jax or int)."""
  for _ in range(cfg.strided_convs):
    lengths_B = conv_length(lengths_B, cfg.subsampling_conv_kernel_size, cfg.subsampling_conv_stride)
  return lengths_B


class ConformerBlock(nnx.Module):
  def __init__(self, cfg: ASRConfig, rngs: nnx.Rngs):
    d, dtype = cfg.hidden_size, jnp.dtype(cfg.dtype)
    ffn = (d, cfg.intermediate_size, cfg.attention_bias, cfg.hidden_act, cfg.activation_dropout, dtype, rngs)
    self.norm_ff1 = layers.layer_norm(d, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.ff1 = FeedForward(*ffn)
    self.norm_attn = layers.layer_norm(d, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attn = RelPositionAttention(d, cfg.num_attention_heads, cfg.attention_bias, cfg.attention_dropout, dtype,
                                     rngs)
    self.norm_conv = layers.layer_norm(d, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.conv = ConvModule(d, cfg.conv_kernel_size, cfg.convolution_bias, cfg.hidden_act, dtype, rngs,
                           cfg.conv_context_right, cfg.chunk)
    self.norm_ff2 = layers.layer_norm(d, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.ff2 = FeedForward(*ffn)
    self.norm_out = layers.layer_norm(d, epsilon=1e-5, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxNxD: jax.Array, pos_PxD: jax.Array, mask_BxN: jax.Array, pairs_BxNxN: jax.Array,
               deterministic: bool, key: jax.Array | None) -> jax.Array:
    keys = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
    x_BxNxD = x_BxNxD + 0.5 * self.ff1(self.norm_ff1(x_BxNxD), deterministic, keys[0])
    x_BxNxD = x_BxNxD + self.attn(self.norm_attn(x_BxNxD), pos_PxD, pairs_BxNxN, deterministic, keys[1])
    x_BxNxD = x_BxNxD + self.conv(self.norm_conv(x_BxNxD), mask_BxN, deterministic)
    x_BxNxD = x_BxNxD + 0.5 * self.ff2(self.norm_ff2(x_BxNxD), deterministic, keys[2])
    return constrain(self.norm_out(x_BxNxD), BLOCK_AXES)

  def step(self, x_BxCxD: jax.Array, pos_PxD: jax.Array, mask_BxC: jax.Array, pairs_BxCxM: jax.Array,
           cache: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """One chunk in inference; `cache` is (past keys, past values, past gated conv frames), returned updated."""
    past_k, past_v, past_conv = cache
    x_BxCxD = x_BxCxD + 0.5 * self.ff1(self.norm_ff1(x_BxCxD), True, None)
    attended_BxCxD, past_k, past_v = self.attn.step(self.norm_attn(x_BxCxD), pos_PxD, pairs_BxCxM, past_k, past_v)
    x_BxCxD = x_BxCxD + attended_BxCxD
    convolved_BxCxD, past_conv = self.conv.step(self.norm_conv(x_BxCxD), mask_BxC, past_conv)
    x_BxCxD = x_BxCxD + convolved_BxCxD
    x_BxCxD = x_BxCxD + 0.5 * self.ff2(self.norm_ff2(x_BxCxD), True, None)
    return self.norm_out(x_BxCxD), (past_k, past_v, past_conv)


class FastConformerCTC(nnx.Module):
  def __init__(self, cfg: ASRConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    d, dtype = cfg.hidden_size, jnp.dtype(cfg.dtype)
    self.subsampling = Subsampling(cfg.num_mel_bins, cfg.subsampling_conv_channels, cfg.subsampling_conv_kernel_size,
                                   cfg.subsampling_conv_stride, cfg.strided_convs, d, dtype, rngs,
                                   cfg.causal_downsampling)
    self.input_dropout = nnx.Dropout(cfg.dropout)
    self.position_dropout = nnx.Dropout(cfg.dropout_positions)
    self.blocks = nnx.List([ConformerBlock(cfg, rngs) for _ in range(cfg.num_hidden_layers)])
    self.ctc_head = layers.dense(d, cfg.vocab_size, ("embed", "vocab"), rngs=rngs, dtype=dtype)

  def __call__(self, mel_BxTxM: jax.Array, mask_BxT: jax.Array, *, deterministic: bool = True,
               key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(CTC logits (B, N, vocab_size) in float32, valid mask (B, N) bool) for log-mel frames with their valid mask.

    `mel_BxTxM` and `mask_BxT` are ParakeetForCTC's `input_features` and `attention_mask` (valid frames first).
    """
    x_BxNxD, valid_BxN = self.encode(mel_BxTxM, mask_BxT, deterministic=deterministic, key=key)
    logits_BxNxV = self.ctc_head(x_BxNxD).astype(jnp.float32)
    return constrain(logits_BxNxV, ("activation_batch", "activation_length", "activation_vocab")), valid_BxN

  def encode(self, mel_BxTxM: jax.Array, mask_BxT: jax.Array, *, deterministic: bool = True,
             key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(encoder output (B, N, D) in the compute dtype, valid mask (B, N) bool): ParakeetEncoder's
    `last_hidden_state` and output `attention_mask`."""
    cfg = self.cfg
    rates = (cfg.dropout, cfg.dropout_positions, cfg.attention_dropout, cfg.activation_dropout, cfg.layerdrop)
    if not deterministic and key is None and any(rates):
      raise ValueError("FastConformerCTC: deterministic=False with dropout or layerdrop needs a `key`")
    keys = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
    lengths_B = mask_BxT.astype(jnp.int32).sum(-1)
    x_BxNxD = self.subsampling(mel_BxTxM.astype(cfg.dtype), lengths_B)
    if cfg.scale_input:
      x_BxNxD = x_BxNxD * math.sqrt(cfg.hidden_size)
    n = x_BxNxD.shape[1]
    pos_PxD = relative_positions(n, cfg.hidden_size).astype(x_BxNxD.dtype)
    x_BxNxD = constrain(self.input_dropout(x_BxNxD, deterministic=deterministic, rngs=keys[0]), BLOCK_AXES)
    pos_PxD = self.position_dropout(pos_PxD, deterministic=deterministic, rngs=keys[1])
    valid_BxN = jnp.arange(n) < output_lengths(lengths_B, cfg)[:, None]
    pairs_BxNxN = valid_BxN[:, :, None] & valid_BxN[:, None, :]
    if cfg.chunk:
      left_chunks = n if cfg.att_context_left < 0 else cfg.att_context_left // cfg.chunk
      pairs_BxNxN &= chunked_context(n, cfg.chunk, left_chunks)
    for i, block in enumerate(self.blocks):
      x_BxNxD = self._run_block(block, x_BxNxD, pos_PxD, valid_BxN, pairs_BxNxN, deterministic,
                                None if key is None else jax.random.fold_in(keys[2], i))
    return x_BxNxD, valid_BxN

  def _run_block(self, block: ConformerBlock, x_BxNxD, pos_PxD, valid_BxN, pairs_BxNxN, deterministic: bool, key):
    """One block, rematerialised with `cfg.remat`; in training it may be skipped (layerdrop), and its updated
    BatchNorm statistics are written back unless it was (the train step returns them with the model's `rest`)."""
    graphdef, state = nnx.split(block)

    def apply(state, x_BxNxD, pos_PxD, valid_BxN, pairs_BxNxN, key):
      # fresh variables of this trace: merge would reuse `state`'s, which BatchNorm may not mutate here
      block = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
      y_BxNxD = block(x_BxNxD, pos_PxD, valid_BxN, pairs_BxNxN, deterministic, key)
      return y_BxNxD, nnx.state(block, nnx.BatchStat)

    if self.cfg.remat:
      apply = jax.checkpoint(apply)
    block_key, drop_key = (None, None) if key is None else tuple(jax.random.split(key))
    y_BxNxD, stats = apply(state, x_BxNxD, pos_PxD, valid_BxN, pairs_BxNxN, block_key)
    if deterministic:
      return y_BxNxD
    if self.cfg.layerdrop:
      dropped = jax.random.uniform(drop_key) < self.cfg.layerdrop
      y_BxNxD = jnp.where(dropped, x_BxNxD, y_BxNxD)
      stats = jax.tree.map(lambda old, new: jnp.where(dropped, old, new), nnx.state(block, nnx.BatchStat), stats)
    nnx.update(block, stats)
    return y_BxNxD
