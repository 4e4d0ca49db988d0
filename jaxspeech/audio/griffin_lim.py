"""Griffin-Lim: audio from a log-mel (`features.log_mel`'s), for listening when no vocoder is trained.

The mel magnitude is mapped back to linear frequency by the filterbank's least-squares inverse (clipped at
0), then the phase is found by alternating projections (Griffin & Lim 1984) with centred, periodic-Hann
STFTs of the same n_fft and hop.
"""

import numpy as np

from jaxspeech.audio import features


def _stft(wav_S: np.ndarray, n_fft: int, hop: int, window_N: np.ndarray) -> np.ndarray:
  padded = np.pad(wav_S, n_fft // 2, mode="reflect")
  frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
  return np.fft.rfft(frames * window_N, axis=-1)


def _istft(spec_TxF: np.ndarray, n_fft: int, hop: int, window_N: np.ndarray, length: int) -> np.ndarray:
  frames = np.fft.irfft(spec_TxF, n=n_fft, axis=-1) * window_N
  total = n_fft + hop * (len(frames) - 1)
  wav, norm = np.zeros(total), np.zeros(total)
  for i, frame in enumerate(frames):
    wav[i * hop:i * hop + n_fft] += frame
    norm[i * hop:i * hop + n_fft] += window_N ** 2
  wav /= np.maximum(norm, 1e-8)
  return wav[n_fft // 2:n_fft // 2 + length]


def griffin_lim(log_mel_TxM: np.ndarray, sample_rate: int = 24000, n_fft: int = 1024, hop: int = 256,
                iterations: int = 32, seed: int = 0) -> np.ndarray:
  """float32 audio of (T − 1)·hop samples for a natural-log HTK mel of power 1 (F5-TTS's features)."""
  fb_FxM = features.mel_filterbank(sample_rate, n_fft, log_mel_TxM.shape[-1])
  magnitude_TxF = np.maximum(np.exp(np.asarray(log_mel_TxM, np.float64)) @ np.linalg.pinv(fb_FxM), 0.0)
  window_N = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
  length = (len(magnitude_TxF) - 1) * hop
  phase = np.exp(2j * np.pi * np.random.default_rng(seed).uniform(size=magnitude_TxF.shape))
  wav = _istft(magnitude_TxF * phase, n_fft, hop, window_N, length)
  for _ in range(iterations):
    spec = _stft(wav, n_fft, hop, window_N)[:len(magnitude_TxF)]
    wav = _istft(magnitude_TxF * np.exp(1j * np.angle(spec)), n_fft, hop, window_N, length)
  return wav.astype(np.float32)
