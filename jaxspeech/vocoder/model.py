"""The vocoder: X-codec2's Vocos decoder driven by F5-TTS log-mels (24 kHz, 100 bins, hop 256), no quantiser.

    mel_BxTxM = features.log_mel(wav_BxS)            T = S // hop + 1 frames
    wav_BxS' = VocosDecoder(mel_BxTxM)               S' = T · hop, ≥ S

Released Vocos (charactr/vocos-mel-24khz) has ConvNeXt blocks; this is the transformer decoder of the codec,
at Vocos' width (512) and depth (8). `family.vocode(workdir, mel)` is what the DiT family calls.
"""


import dataclasses

import jax
from flax import nnx

from jaxspeech.audio import features
from jaxspeech.train.config import build_sections
from jaxspeech.vocoder.decoder import DecoderConfig, VocosDecoder


@dataclasses.dataclass(frozen=True)
class VocoderConfig:
  """The vocoder family's `config.model`: F5-TTS's log-mel and a Vocos decoder over it (input_channels = n_mels,
  the same hop); `decoder` may be given as a mapping (config.json's)."""
  sample_rate: int = 24000
  n_mels: int = 100
  n_fft: int = 1024
  hop: int = 256
  decoder: DecoderConfig = DecoderConfig(input_channels=100, dim=512, depth=8, heads=8, n_fft=1024, hop=256)

  def __post_init__(self):
    build_sections(self, decoder=DecoderConfig)


# `base`: Vocos mel-24kHz's width and depth; `tiny`: CPU-sized.
SIZES = {
    "tiny": VocoderConfig(decoder=DecoderConfig(input_channels=100, dim=64, depth=2, heads=4, n_fft=1024, hop=256,
                                                norm_groups=16)),
    "base": VocoderConfig(),
}


class Vocoder(nnx.Module):
  def __init__(self, cfg: VocoderConfig, *, rngs: nnx.Rngs):
    if (cfg.decoder.input_channels, cfg.decoder.hop) != (cfg.n_mels, cfg.hop):
      raise ValueError(f"the decoder takes {cfg.decoder.input_channels} channels at hop {cfg.decoder.hop}; "
                       f"the mels have {cfg.n_mels} bins at hop {cfg.hop}")
    self.sample_rate, self.n_mels, self.n_fft, self.hop = cfg.sample_rate, cfg.n_mels, cfg.n_fft, cfg.hop
    self.decoder = VocosDecoder(cfg.decoder, rngs=rngs)

  def mel(self, wav_BxS: jax.Array) -> jax.Array:
    """F5-TTS's log-mel (B, S // hop + 1, n_mels)."""
    return features.log_mel(wav_BxS, self.sample_rate, self.n_fft, self.n_fft, self.hop, self.n_mels)

  def __call__(self, mel_BxTxM: jax.Array) -> jax.Array:
    """wav (B, T · hop)."""
    return self.decoder(mel_BxTxM)
