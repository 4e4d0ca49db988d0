"""X-codec2 (Ye et al. 2025): one FSQ codebook over fused acoustic and (optional) semantic features.

    acoustic_BxNxA = Encoder(wav)                                 hop = prod(encoder.strides) samples per code
    semantic_BxNxE = SemanticEncoder(w2v-BERT 2.0 hidden_states[16])          (semantic branch only)
    h_BxNxD = fc_prior(cat[semantic, acoustic])  →  FSQ  →  codes_BxN, z_q_BxNxD
    wav_hat = VocosDecoder(fc_post_a(z_q));  semantic_pred = SemanticDecoder(fc_post_s(z_q))

With `semantic.w2vbert` configured, the model runs w2v-BERT itself (`semantic_model`, X-codec2's name) on its
input padded by 160 samples each side, as X-codec2 does: `features.w2vbert_features` → hidden_states[layers],
one frame per code. The teacher is frozen: its output is under stop_gradient, and `frozen(path)` names its params
for the optimizer. Without it the semantic branch takes the features as an argument (`semantic_features_BxNxF`,
F = `semantic.features`, one frame per code).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.audio import features
from jaxspeech.vocoder.decoder import DecoderConfig, VocosDecoder
from jaxspeech.codec.encoder import Encoder, EncoderConfig
from jaxspeech.codec.fsq import FSQ
from jaxspeech.codec.semantic import SemanticConv
from jaxspeech.teachers.w2vbert.model import W2VBert, W2VBertConfig
from jaxspeech.nn import layers
from jaxspeech.train.config import build_sections

W2VBERT_HOP = 320   # w2v-BERT's frames: a 10 ms fbank stacked in pairs, 20 ms at 16 kHz
TEACHER = "semantic_model"


@dataclasses.dataclass(frozen=True)
class SemanticConfig:
  """w2v-BERT 2.0 hidden_states[16] (`features` wide, 50 Hz) → SemanticEncoder → `dim`, fused by fc_prior."""
  enabled: bool = True
  features: int = 1024
  dim: int = 1024
  w2vbert: W2VBertConfig | None = None  # None: the features come as an argument (`semantic_features_BxNxF`)

  def __post_init__(self):
    build_sections(self, w2vbert=W2VBertConfig)


@dataclasses.dataclass(frozen=True)
class FSQConfig:
  levels: tuple[int, ...] = (4,) * 8
  dim: int = 2048

  def __post_init__(self):
    object.__setattr__(self, "levels", tuple(self.levels))


@dataclasses.dataclass(frozen=True)
class CodecConfig:
  """The codec family's `config.model`; defaults: HKUSTAudio/xcodec2 (16 kHz, hop 320 (50 codes/s), FSQ [4]*8
  (65,536 codes), semantic branch on). Nested sections may be given as mappings (config.json's)."""
  sample_rate: int = 16000
  encoder: EncoderConfig = EncoderConfig()
  semantic: SemanticConfig = SemanticConfig()
  fsq: FSQConfig = FSQConfig()
  decoder: DecoderConfig = DecoderConfig()
  dtype: str = "float32"   # compute dtype ("bfloat16" on TPU/GPU); params, FSQ and the ISTFT stay float32

  def __post_init__(self):
    build_sections(self, encoder=EncoderConfig, semantic=SemanticConfig, fsq=FSQConfig, decoder=DecoderConfig)


def frozen(path: tuple[str, ...]) -> bool:
  """True for the params of the frozen w2v-BERT teacher (they belong in no optimizer group that updates)."""
  return path[0] == TEACHER


class Codec(nnx.Module):
  def __init__(self, cfg: CodecConfig, *, rngs: nnx.Rngs):
    self.hop = int(np.prod(cfg.encoder.strides))
    if self.hop != cfg.decoder.hop:
      raise ValueError(f"encoder hop {self.hop} (prod of strides {list(cfg.encoder.strides)}) != decoder.hop "
                       f"{cfg.decoder.hop}: the decoder must give back hop samples per code")
    self.semantic = bool(cfg.semantic.enabled)
    sem, vq_dim, dtype = cfg.semantic, cfg.fsq.dim, jnp.dtype(cfg.dtype)
    self.encoder = Encoder(cfg.encoder, dtype=dtype, rngs=rngs)
    prior_in = cfg.encoder.dim + (sem.dim if self.semantic else 0)
    self.fc_prior = layers.dense(prior_in, vq_dim, ("embed", "mlp"), dtype=dtype, rngs=rngs, torch_init=True)
    self.quantizer = FSQ(vq_dim, cfg.fsq.levels, rngs=rngs)
    self.fc_post_a = layers.dense(vq_dim, cfg.decoder.input_channels, ("mlp", "embed"), dtype=dtype, rngs=rngs,
                                  torch_init=True)
    self.decoder = VocosDecoder(cfg.decoder, dtype=dtype, rngs=rngs)
    if self.semantic:
      self.semantic_encoder = SemanticConv(sem.features, sem.dim, sem.dim, dtype=dtype, rngs=rngs)
      self.fc_post_s = layers.dense(vq_dim, sem.dim, ("mlp", "embed"), dtype=dtype, rngs=rngs, torch_init=True)
      self.semantic_decoder = SemanticConv(sem.dim, sem.dim, sem.features, dtype=dtype, rngs=rngs)
    teacher = sem.w2vbert if self.semantic else None
    if teacher and (self.hop != W2VBERT_HOP or teacher.dim != sem.features):
      raise ValueError(f"w2v-BERT gives {teacher.dim} features every {W2VBERT_HOP} samples; this codec has "
                       f"hop {self.hop} and semantic.features {sem.features}")
    self.semantic_model = nnx.data(W2VBert(teacher, dtype=dtype, rngs=rngs) if teacher else None)

  def teacher(self, wav_BxS: jax.Array) -> jax.Array:
    """w2v-BERT hidden_states[layers] (B, ceil(S / hop), features) of the audio, float32, under stop_gradient."""
    padded_BxS = jnp.pad(self.pad(wav_BxS).astype(jnp.float32), ((0, 0), (W2VBERT_HOP // 2, W2VBERT_HOP // 2)))
    hidden_BxNxF = self.semantic_model(features.w2vbert_features(padded_BxS))[-1]
    return jax.lax.stop_gradient(hidden_BxNxF.astype(jnp.float32))

  def pad(self, wav_BxS: jax.Array) -> jax.Array:
    """Zero-pads the end to a multiple of hop (xcodec2's wrapper always pads, by a full hop if S already is one)."""
    return jnp.pad(wav_BxS, ((0, 0), (0, -wav_BxS.shape[1] % self.hop)))

  def quantize(self, wav_BxS: jax.Array, semantic_features_BxNxF: jax.Array | None = None) -> dict:
    """{"codes": (B, N) int32, "z_q": (B, N, D) straight-through, and with the semantic branch
    "semantic_target" (the given or computed features) and "semantic_pred"}; N = ceil(S / hop)."""
    acoustic_BxNxA = self.encoder(self.pad(wav_BxS))
    x_BxNxC = acoustic_BxNxA
    if self.semantic_model is not None:
      if semantic_features_BxNxF is not None:
        raise ValueError("this codec computes its semantic features with its own w2v-BERT; pass none")
      semantic_features_BxNxF = self.teacher(wav_BxS)
    if self.semantic:
      frames = acoustic_BxNxA.shape[1]
      if semantic_features_BxNxF is None or semantic_features_BxNxF.shape[1] != frames:
        raise ValueError(f"this codec has the semantic branch: pass w2v-BERT features (B, {frames}, "
                         "semantic.features), one frame per code")
      x_BxNxC = jnp.concatenate([self.semantic_encoder(semantic_features_BxNxF), acoustic_BxNxA], axis=-1)
    z_q_BxNxD, codes_BxN = self.quantizer.quantize(self.fc_prior(x_BxNxC))
    out = {"codes": codes_BxN, "z_q": z_q_BxNxD}
    if self.semantic:
      out["semantic_target"] = semantic_features_BxNxF
      out["semantic_pred"] = self.semantic_decoder(self.fc_post_s(z_q_BxNxD)).astype(jnp.float32)
    return out

  def encode(self, wav_BxS: jax.Array, semantic_features_BxNxF: jax.Array | None = None) -> jax.Array:
    """FSQ indices (B, ceil(S / hop)) int32."""
    return self.quantize(wav_BxS, semantic_features_BxNxF)["codes"]

  def decode_latent(self, z_q_BxNxD: jax.Array) -> jax.Array:
    """wav (B, N · hop) of quantised latents."""
    return self.decoder(self.fc_post_a(z_q_BxNxD))

  def decode(self, codes_BxN: jax.Array) -> jax.Array:
    """wav (B, N · hop) of FSQ indices."""
    return self.decode_latent(self.quantizer.decode(codes_BxN))

  def __call__(self, wav_BxS: jax.Array, semantic_features_BxNxF: jax.Array | None = None) -> dict:
    """quantize's outputs plus "wav": the reconstruction (B, N · hop)."""
    out = self.quantize(wav_BxS, semantic_features_BxNxF)
    return {**out, "wav": self.decode_latent(out["z_q"])}
