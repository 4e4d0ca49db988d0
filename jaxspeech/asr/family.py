"""The asr family: a FastConformer encoder with a CTC head (NVIDIA's Parakeet-CTC), trained on the corpus.

Audio is resampled to 16 kHz in the input pipeline and grouped into frame-budget batches (about
`data.frame_budget` 10 ms frames each, similar lengths together, one compile per bucket of `data.bucket_seconds`);
transcripts become the pieces of `data.tokenizer` (a sentencepiece model) or, when it is "", the characters of
`jaxspeech.asr.text.ALPHABET`. An utterance with more pieces than the encoder has output frames cannot be
aligned by CTC: it is skipped and counted. The step computes Parakeet's features on the device
(`audio.features.parakeet_features`), masks them with SpecAugment when training, and takes CTC over the pieces,
normalised by the batch's pieces. Evaluation reports the CTC loss, and the WER and CER of greedy decoding (its
best classes scored on the host after the step).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxspeech.asr import evaluate as scoring, text
from jaxspeech.asr.model import ASRConfig, FastConformerCTC, output_lengths
from jaxspeech.audio import features
from jaxspeech.data import pipeline, speech_text
from jaxspeech.train.family import Family

SAMPLE_RATE = 16_000
HOP = 160


def model_config(cfg) -> ASRConfig:
  return ASRConfig(**cfg.model.to_dict())


def build_model(cfg, rngs):
  return FastConformerCTC(model_config(cfg), rngs=rngs)


@functools.lru_cache(maxsize=4)
def tokenizer(path: str):
  return text.tokenizer(path)


def log_mel(batch, cfg):
  """(Parakeet's normalised log-mel (B, T, M), valid frames mask (B, T)); rows that hold no example are empty."""
  mel_BxTxM, frames_B = features.parakeet_features(batch["audio"], cfg.model.num_mel_bins,
                                                   lengths_B=batch["audio_lengths"],
                                                   normalize=cfg.model.normalize_features,
                                                   mean=cfg.model.feature_mean, std=cfg.model.feature_std)
  frames_B = jnp.where(batch["valid"], frames_B, 0)
  return mel_BxTxM, jnp.arange(mel_BxTxM.shape[1]) < frames_B[:, None]


def spec_augment(mel_BxTxM, mask_BxT, key, a):
  """SpecAugment as NeMo's FastConformer recipes run it: `a.freq_masks` bands of up to `a.freq_width` bins and
  `a.time_masks` spans of up to `a.time_width` of each utterance's frames, set to 0 (the features' mean)."""
  B, T, M = mel_BxTxM.shape
  k_fw, k_f0, k_tw, k_t0 = jax.random.split(key, 4)
  width_BxF = jax.random.randint(k_fw, (B, a.freq_masks), 0, a.freq_width + 1)
  start_BxF = jax.random.randint(k_f0, (B, a.freq_masks), 0, M) % jnp.maximum(M - width_BxF, 1)
  bins_M = jnp.arange(M)
  freq_BxM = ((bins_M >= start_BxF[..., None]) & (bins_M < (start_BxF + width_BxF)[..., None])).any(1)
  frames_B = mask_BxT.sum(-1)
  longest_B = jnp.maximum(1, (a.time_width * frames_B).astype(jnp.int32))
  width_BxK = (jax.random.uniform(k_tw, (B, a.time_masks)) * (longest_B[:, None] + 1)).astype(jnp.int32)
  start_BxK = (jax.random.uniform(k_t0, (B, a.time_masks)) * jnp.maximum(frames_B[:, None] - width_BxK, 1)
               ).astype(jnp.int32)
  frames_T = jnp.arange(T)
  time_BxT = ((frames_T >= start_BxK[..., None]) & (frames_T < (start_BxK + width_BxK)[..., None])).any(1)
  return jnp.where(freq_BxM[:, None, :] | time_BxT[:, :, None], 0.0, mel_BxTxM)


def _ctc(model, batch, cfg, key=None):
  """(per-row CTC loss (B,), rows that count (B,), logits, output valid mask); training when `key` is given."""
  mel_BxTxM, mask_BxT = log_mel(batch, cfg)
  if key is not None:
    key, k_aug = jax.random.split(key)
    mel_BxTxM = spec_augment(mel_BxTxM, mask_BxT, k_aug, cfg.augment)
  logits_BxNxV, valid_BxN = model(mel_BxTxM, mask_BxT, deterministic=key is None, key=key)
  loss_B = optax.ctc_loss(logits_BxNxV, (~valid_BxN).astype(jnp.float32), batch["text"],
                          (~batch["text_mask"]).astype(jnp.float32), blank_id=model_config(cfg).blank_id)
  return loss_B, batch["valid"] & (batch["text_lengths"] > 0), logits_BxNxV, valid_BxN


def loss(model, batch, key, step, cfg):
  del step
  loss_B, rows_B, _, _ = _ctc(model, batch, cfg, key)
  pieces = jnp.maximum(jnp.sum(jnp.where(rows_B, batch["text_lengths"], 0)), 1)
  return jnp.sum(jnp.where(rows_B, loss_B, 0.0)) / pieces, {}


def evaluate(model, batch, cfg):
  """The CTC loss per piece; each row's best class per frame, for WER and CER on the host (`evaluate_on_host`)."""
  loss_B, rows_B, logits_BxNxV, valid_BxN = _ctc(model, batch, cfg)
  pieces_B = jnp.where(rows_B, batch["text_lengths"], 0)
  return {"loss": (jnp.sum(jnp.where(rows_B, loss_B, 0.0)), jnp.sum(pieces_B)),
          "best": jnp.where(valid_BxN, jnp.argmax(logits_BxNxV, -1), model_config(cfg).blank_id).astype(jnp.int32),
          "text": batch["text"], "text_lengths": pieces_B}


def evaluate_on_host(outputs, cfg) -> dict[str, tuple[float, float]]:
  """WER and CER of the greedy-decoded rows against their transcripts (rows that do not count have no pieces)."""
  tok, blank = tokenizer(cfg.data.tokenizer), model_config(cfg).blank_id
  counts = np.zeros(4)
  for best_N, text_L, n in zip(outputs["best"], outputs["text"], outputs["text_lengths"]):
    if n:
      e = scoring.errors(tok.decode(text.collapse(best_N, blank)), tok.decode(text_L[:n].tolist()))
      counts += (*e["wer"], *e["cer"])
  return {"wer": (counts[0], counts[1]), "cer": (counts[2], counts[3])}


class AddPieces:
  """A `DecodeSpeech` features hook: the transcript as pieces; None (a filtered record) where CTC cannot align
  them to the encoder's output frames (one frame per piece, one more between repeated pieces)."""

  def __init__(self, cfg):
    self.tokenizer = tokenizer(cfg.data.tokenizer)
    self.model = model_config(cfg)

  def __call__(self, example, record):
    pieces = np.asarray(self.tokenizer.encode(record["text"].decode()), np.int32)
    frames = int(output_lengths(len(example["audio"]) // HOP, self.model))
    if len(pieces) == 0 or len(pieces) + int(np.sum(pieces[1:] == pieces[:-1])) > frames:
      return None
    return {**example, "text": pieces}


def make_data(cfg, split, *, train, shard_index, shard_count):
  pipeline.require_speech(cfg.data.path, "the asr family", extra=("text",))
  pieces = tokenizer(cfg.data.tokenizer).vocab_size
  if pieces + 1 != cfg.model.vocab_size:
    raise ValueError(f"model.vocab_size={cfg.model.vocab_size} must be the tokenizer's {pieces} pieces + 1 (the "
                     f"CTC blank)")
  return pipeline.for_family(cfg, split, train=train, shard_index=shard_index, shard_count=shard_count,
                             map_fn=pipeline.DecodeSpeech(SAMPLE_RATE, features=AddPieces(cfg)),
                             batching=speech_text.frame_budget(cfg, shard_count, SAMPLE_RATE, HOP))


def batch_axes(cfg):
  del cfg
  return speech_text.AXES


def batch_shapes(cfg) -> dict[str, jax.ShapeDtypeStruct]:
  return speech_text.batch_shapes(cfg, SAMPLE_RATE, HOP)


def train_flops(cfg) -> float:
  """Forward + backward (3× forward) matmul and convolution FLOPs of one global batch of `data.frame_budget`
  10 ms frames, at the longest bucket's length (attention's share); the subsampling counted at its input rate."""
  m = model_config(cfg)
  d, f, c, k = m.hidden_size, m.intermediate_size, m.subsampling_conv_channels, m.subsampling_conv_kernel_size
  n = max(cfg.data.bucket_seconds) * SAMPLE_RATE / HOP / m.subsampling_factor  # encoder frames of a row
  per_output = m.num_hidden_layers * (
      2 * 2 * 2 * d * f                        # two half-step FFNs
      + 2 * 4 * d * d + 2 * d * d              # q, k, v, out; the relative positions' projection
      + 2 * 3 * n * d                          # q·kᵀ, q·pᵀ, p·v over n keys
      + 2 * (2 * d * d + m.conv_kernel_size * d + d * d))  # conv module: GLU pointwise, depthwise, pointwise
  per_output += 2 * d * m.vocab_size
  bins, convs = m.num_mel_bins, m.strided_convs
  per_input = 2 * k * k * c * bins / 4  # the first (full) conv, at stride 2 in time and frequency
  per_input += sum(2 * (k * k * c + c * c) * bins / 4 ** (i + 1) / 4 for i in range(convs - 1))  # dw + pw
  per_input += 2 * c * (bins / 2 ** convs) * d / m.subsampling_factor  # the linear into the encoder
  frames = cfg.data.frame_budget
  return 3.0 * (per_output * frames / m.subsampling_factor + per_input * frames)


def tokens_per_step(cfg) -> float:
  return float(cfg.data.frame_budget)  # 10 ms frames, padding included: the budget bounds every batch's frames


def units(batch) -> dict[str, float]:
  valid = np.asarray(batch["valid"])
  return {"examples": float(valid.sum()), "pieces": float(np.asarray(batch["text_lengths"])[valid].sum()),
          "frames": float(np.asarray(batch["audio_lengths"])[valid].sum() / HOP)}  # the last: the planner's rate


FAMILY = Family(name="asr", build_model=build_model, loss=loss, evaluate=evaluate, make_data=make_data,
                batch_axes=batch_axes, train_flops=train_flops, units=units, tokens_per_step=tokens_per_step,
                batch_shapes=batch_shapes, prepare=text.prepare, evaluate_on_host=evaluate_on_host)
