"""Codec model configs (`config.model` of the codec family): `base` is the released X-codec2 shape.

`semantic.w2vbert` is the frozen w2v-BERT encoder the codec runs on its own input (`jaxspeech.teachers.w2vbert`);
None: the semantic branch takes its features as an argument (`semantic_features_BxNxF`).
"""

import ml_collections

from jaxspeech.teachers.w2vbert import model as w2vbert_model


def base() -> ml_collections.ConfigDict:
  """HKUSTAudio/xcodec2: 16 kHz, hop 320 (50 codes/s), FSQ [4]*8 (65,536 codes), semantic branch on."""
  return ml_collections.ConfigDict(dict(
      sample_rate=16000,
      encoder=dict(channels=48, strides=[2, 2, 4, 4, 5], dilations=[1, 3, 9], dim=1024),
      # w2v-BERT 2.0 hidden_states[16] (`features` wide, 50 Hz) → SemanticEncoder → `dim`, fused by fc_prior.
      semantic=dict(enabled=True, features=1024, dim=1024, w2vbert=None),
      fsq=dict(levels=[4] * 8, dim=2048),
      decoder=dict(input_channels=1024, dim=1024, depth=12, heads=16, n_fft=1280, hop=320, norm_groups=32),
      dtype="float32",   # compute dtype ("bfloat16" on TPU/GPU); params, FSQ and the ISTFT stay float32
  ))


def base_w2vbert() -> ml_collections.ConfigDict:
  """`base` running w2v-BERT 2.0 itself (import its weights with `jaxspeech convert codec ... --w2vbert DIR`)."""
  cfg = base()
  cfg.semantic.w2vbert = w2vbert_model.config_2_0()
  return cfg


def tiny() -> ml_collections.ConfigDict:
  """A CPU-sized codec with the same rate and codebook (16 kHz, 50 codes/s, 65,536 codes), acoustic only."""
  cfg = base()
  cfg.encoder.update(channels=8, dim=64)
  cfg.semantic.update(enabled=False, dim=64)
  cfg.fsq.dim = 64
  cfg.decoder.update(input_channels=64, dim=64, depth=2, heads=4, norm_groups=16)
  return cfg


def tiny_semantic() -> ml_collections.ConfigDict:
  """`tiny` with the semantic branch over a 2-layer, 32-wide random w2v-BERT (the code path, not its features)."""
  cfg = tiny()
  w2vbert = w2vbert_model.config_2_0()
  w2vbert.update(dim=32, layers=2, heads=4, intermediate=64, conv_kernel=7)
  cfg.semantic.update(enabled=True, features=w2vbert.dim, w2vbert=w2vbert)
  return cfg


SIZES = {"tiny": tiny, "tiny_semantic": tiny_semantic, "base": base, "base_w2vbert": base_w2vbert}
