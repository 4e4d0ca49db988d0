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
  rtol: float = 1e-3   # the adaptive method's tolerances
  atol: float = 1e-4


def vocode(vocoder: str | None, mel_TxM) -> np.ndarray:
  """Audio at 24 kHz from a log-mel: the vocoder workdir's, or Griffin-Lim."""
  if vocoder is None:
    return griffin_lim(np.asarray(mel_TxM))
  return np.asarray(vocoder_family.vocode(vocoder, np.asarray(mel_TxM)[None])[0])


@dataclasses.dataclass(frozen=True)
class Prompt:
  ref_mel_TxM: np.ndarray   # the reference's log-mel, at least TARGET_RMS loud
  ids_1xN: np.ndarray       # the reference's transcript and the new text, as vocabulary ids
  duration: int             # total frames, reference included
  ref_frames: int
  rms: float                # the reference's own loudness, which the output is brought back to


def prompt(model, tokens: list[str], ref_S: np.ndarray, rate: int, ref_text: str, text: str, *,
           duration_seconds: float | None = None, speed: float = 1.0) -> Prompt:
  """The sampler's inputs for `text` in the voice of `ref_S` (mono, `rate` Hz)."""
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
    duration = sample.durations(ref_frames, ref_text, text, speed)
  return Prompt(ref_mel_TxM, vocab.encode(ref_text + text, tokens)[None], duration, ref_frames, rms)


def generate(model, p: Prompt, key, sampling: Sampling = Sampling()) -> np.ndarray:
  """The mel frames generated past the reference (T, M)."""
  mel_BxLxM, duration_B, _ = sample.sample(
      model, p.ref_mel_TxM[None], [len(p.ref_mel_TxM)], p.ids_1xN, [p.duration], key, nfe=sampling.nfe,
      cfg_strength=sampling.cfg_strength, sway=sampling.sway, method=sampling.method,
      rtol=sampling.rtol, atol=sampling.atol)
  return np.asarray(mel_BxLxM[0, p.ref_frames:int(duration_B[0])])


def loudness_of(p: Prompt, out_S: np.ndarray) -> np.ndarray:
  return out_S * p.rms / TARGET_RMS if p.rms < TARGET_RMS else out_S


def speak(model, tokens: list[str], ref_S: np.ndarray, rate: int, ref_text: str, text: str, key, *,
          vocoder: str | None = None, duration_seconds: float | None = None,
          sampling: Sampling = Sampling()) -> tuple[np.ndarray, int, int]:
  """(24 kHz audio of `text` in the voice of `ref_S` (mono, `rate` Hz), generated frames, reference frames)."""
  p = prompt(model, tokens, ref_S, rate, ref_text, text, duration_seconds=duration_seconds, speed=sampling.speed)
  generated_TxM = generate(model, p, key, sampling)
  return loudness_of(p, vocode(vocoder, generated_TxM)), len(generated_TxM), p.ref_frames
