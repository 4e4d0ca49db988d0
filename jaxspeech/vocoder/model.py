"""The vocoder: X-codec2's Vocos decoder driven by F5-TTS log-mels (24 kHz, 100 bins, hop 256), no quantiser.

    mel_BxTxM = features.log_mel(wav_BxS)            T = S // hop + 1 frames
    wav_BxS' = VocosDecoder(mel_BxTxM)               S' = T · hop, ≥ S

Released Vocos (charactr/vocos-mel-24khz) has ConvNeXt blocks; this is the transformer decoder of the codec,
at Vocos' width (512) and depth (8). `family.vocode(workdir, mel)` is what the DiT family calls.
"""


import jax
import ml_collections
from flax import nnx

from jaxspeech.audio import features
from jaxspeech.vocoder.decoder import VocosDecoder


class Vocoder(nnx.Module):
  """`cfg`: sample_rate, n_mels, n_fft, hop and `decoder` (a VocosDecoder config with input_channels = n_mels)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
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
