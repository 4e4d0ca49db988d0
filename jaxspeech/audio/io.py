"""Sample-format conversion and resampling (soxr, the libsoxr VHQ resampler)."""

import numpy as np
import soxr


def to_float(wav_int16: np.ndarray) -> np.ndarray:
  """int16 PCM → float32 in [-1, 1)."""
  return np.asarray(wav_int16, np.float32) / 32768.0


def to_int16(wav: np.ndarray) -> np.ndarray:
  """float in [-1, 1] → int16 PCM, clipping out-of-range samples."""
  return np.clip(np.round(np.asarray(wav, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
  """Resamples a mono float or int16 waveform; int16 in gives int16 out."""
  if sr_in == sr_out:
    return wav
  if wav.dtype == np.int16:
    return to_int16(soxr.resample(to_float(wav), sr_in, sr_out, quality="VHQ"))
  return soxr.resample(np.asarray(wav, np.float32), sr_in, sr_out, quality="VHQ").astype(np.float32)
