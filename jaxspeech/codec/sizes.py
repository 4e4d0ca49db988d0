"""Codec model configs (`config.model` of the codec family): `base` is the released X-codec2 shape."""

import dataclasses

from jaxspeech.codec.model import CodecConfig, EncoderConfig, FSQConfig, SemanticConfig
from jaxspeech.teachers.w2vbert.model import W2VBertConfig
from jaxspeech.vocoder.decoder import DecoderConfig


def base() -> CodecConfig:
  """HKUSTAudio/xcodec2: 16 kHz, hop 320 (50 codes/s), FSQ [4]*8 (65,536 codes), semantic branch on."""
  return CodecConfig()


def base_w2vbert() -> CodecConfig:
  """`base` running w2v-BERT 2.0 itself (import its weights with `jaxspeech convert codec ... --w2vbert DIR`)."""
  return dataclasses.replace(base(), semantic=SemanticConfig(w2vbert=W2VBertConfig()))


def tiny() -> CodecConfig:
  """A CPU-sized codec with the same rate and codebook (16 kHz, 50 codes/s, 65,536 codes), acoustic only."""
  return CodecConfig(encoder=EncoderConfig(channels=8, dim=64), semantic=SemanticConfig(enabled=False, dim=64),
                     fsq=FSQConfig(dim=64),
                     decoder=DecoderConfig(input_channels=64, dim=64, depth=2, heads=4, norm_groups=16))


def tiny_semantic() -> CodecConfig:
  """`tiny` with the semantic branch over a 2-layer, 32-wide random w2v-BERT (the code path, not its features)."""
  w2vbert = W2VBertConfig(dim=32, layers=2, heads=4, intermediate=64, conv_kernel=7)
  return dataclasses.replace(tiny(), semantic=SemanticConfig(features=w2vbert.dim, dim=64, w2vbert=w2vbert))


SIZES = {"tiny": tiny, "tiny_semantic": tiny_semantic, "base": base, "base_w2vbert": base_w2vbert}
