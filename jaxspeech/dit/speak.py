"""Zero-shot speech as F5-TTS's infer_process makes it: the reference clip (24 kHz, RMS raised to 0.1 when
quieter) prompts the DiT with its transcript followed by the new text; the duration comes from the reference's
speaking rate (or is given: total seconds with the reference); the sampled mel past the reference is vocoded
(a vocoder workdir's, else Griffin-Lim) and brought back to the reference's loudness."""

import dataclasses

import numpy as np

from jaxspeech.dit.family import HOP, SAMPLE_RATE
from jaxspeech.audio.griffin_lim import griffin_lim
from jaxspeech.vocoder import family as vocoder_family
from jaxspeech.audio import features, io as audio_io
from jaxspeech.dit import sample, vocab

TARGET_RMS = 0.1


@dataclasses.dataclass(frozen=True)
class Sampling:
  nfe: int = 32
  cfg_strength: float = 2.0
  sway: float = -1.0
  method: str = "euler"
  speed: float = 1.0


def vocode(vocoder: str | None, mel_TxM) -> np.ndarray:
  """Audio at 24 kHz from a log-mel: the vocoder workdir's, or Griffin-Lim."""
  if vocoder is None:
    return griffin_lim(np.asarray(mel_TxM))
  return np.asarray(vocoder_family.vocode(vocoder, np.asarray(mel_TxM)[None])[0])


def speak(model, tokens: list[str], ref_S: np.ndarray, rate: int, ref_text: str, text: str, key, *,
          vocoder: str | None = None, duration_seconds: float | None = None,
          sampling: Sampling = Sampling()) -> tuple[np.ndarray, int, int]:
  """(24 kHz audio of `text` in the voice of `ref_S` (mono, `rate` Hz), generated frames, reference frames)."""
  wav_S = audio_io.resample(np.asarray(ref_S, np.float32), rate, SAMPLE_RATE)
  rms = float(np.sqrt(np.mean(np.square(wav_S))))
  if rms < TARGET_RMS:
    wav_S = wav_S * TARGET_RMS / max(rms, 1e-8)
  ref_mel_TxM = np.asarray(features.log_mel(wav_S, SAMPLE_RATE, hop_length=HOP, n_mels=model.cfg.mel_dim))
  ref_text = ref_text if ref_text.endswith(" ") else ref_text + " "
  ref_frames = len(wav_S) // HOP
  if duration_seconds:
    duration = int(duration_seconds * SAMPLE_RATE / HOP)
  else:
    duration = sample.durations(ref_frames, ref_text, text, sampling.speed)
  ids = vocab.encode(ref_text + text, tokens)[None]
  mel_BxLxM, duration_B = sample.sample(
      model, ref_mel_TxM[None], [len(ref_mel_TxM)], ids, [duration], key, nfe=sampling.nfe,
      cfg_strength=sampling.cfg_strength, sway=sampling.sway, method=sampling.method)
  generated_TxM = np.asarray(mel_BxLxM[0, ref_frames:int(duration_B[0])])
  out_S = vocode(vocoder, generated_TxM)
  if rms < TARGET_RMS:
    out_S = out_S * rms / TARGET_RMS
  return out_S, len(generated_TxM), ref_frames
