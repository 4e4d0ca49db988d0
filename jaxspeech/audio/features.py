"""Batched, jittable audio features: log-mels (F5-TTS/Vocos, DAC codec losses), Kaldi fbank (AST) and
w2v-BERT 2.0's stacked, normalised fbank (the codec's semantic branch).

Each feature takes float audio `wav_BxS` (or one `wav_S`, giving unbatched output). For a zero-padded
batch, pass `lengths_B` (valid samples per example): the result becomes `(features, frames_B)`, and each
example's first `frames_B` frames equal those of the unpadded example (edge reflection uses the example's
own end). Frames past `frames_B` hold junk. Configuration arguments are static under `jax.jit`.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

AST_MEAN, AST_STD = -4.2677393, 4.5689974  # AST's AudioSet fbank statistics
# DAC's MelSpectrogramLoss (conf/base.yml): (n_fft, hop_length, win_length, n_mels), hop = window / 4.
DAC_MEL_CONFIGS = tuple((w, w // 4, w, m) for w, m in zip((32, 64, 128, 256, 512, 1024, 2048),
                                                            (5, 10, 20, 40, 80, 160, 320)))
_KALDI_EPSILON = float(np.finfo(np.float32).eps)  # Kaldi floors energies at float epsilon before the log
_HIGHEST = jax.lax.Precision.HIGHEST  # accelerators otherwise multiply float32 in bf16/tf32


def _batched(fn):
  """Lets `fn(wav_BxS, ..., lengths_B=...)` take one `wav_S` (and a scalar length) and unbatches its output."""

  @functools.wraps(fn)
  def wrapper(wav, *args, lengths_B=None, **kwargs):
    wav = jnp.asarray(wav)
    if wav.ndim == 2:
      return fn(wav, *args, lengths_B=lengths_B, **kwargs)
    lengths_B = None if lengths_B is None else jnp.reshape(lengths_B, (1,))
    return jax.tree.map(lambda x: x[0], fn(wav[None], *args, lengths_B=lengths_B, **kwargs))

  return wrapper


def _hz_to_mel(f, htk: bool):
  if htk:
    return 2595.0 * np.log10(1.0 + f / 700.0)
  # Slaney's Auditory Toolbox scale (librosa's default): linear to 1 kHz, logarithmic above.
  return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + 27.0 * np.log(np.maximum(f, 1000.0) / 1000.0) / np.log(6.4))


def _mel_to_hz(m, htk: bool):
  if htk:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
  return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (np.maximum(m, 15.0) - 15.0)))


@functools.cache
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None,
                   htk: bool = True, norm: str | None = None) -> np.ndarray:
  """(n_fft // 2 + 1, n_mels) triangular filters, float64, equal to `librosa.filters.mel(...).T`.

  htk=True, norm=None is torchaudio.transforms.MelSpectrogram's default (Vocos, F5-TTS); htk=False,
  norm="slaney" is librosa's default (DAC). f_max=None means sample_rate / 2.
  """
  if norm not in (None, "slaney"):
    raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
  f_max = sample_rate / 2 if f_max is None else f_max
  hz_P = _mel_to_hz(np.linspace(_hz_to_mel(f_min, htk), _hz_to_mel(f_max, htk), n_mels + 2), htk)
  freqs_F = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
  ramps_FxP = freqs_F[:, None] - hz_P[None, :]
  width_P = np.diff(hz_P)
  fb_FxM = np.maximum(0.0, np.minimum(ramps_FxP[:, :-2] / width_P[:-1], -ramps_FxP[:, 2:] / width_P[1:]))
  if norm == "slaney":
    fb_FxM *= 2.0 / (hz_P[2:] - hz_P[:-2])  # equal area per filter
  fb_FxM.flags.writeable = False
  return fb_FxM


@functools.cache
def kaldi_mel_banks(num_bins: int, n_fft: int, sample_rate: float, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> np.ndarray:
  """(n_fft // 2 + 1, num_bins) Kaldi mel banks (torchaudio.compliance.kaldi.get_mel_banks, no VTLN), float64.

  Mel is 1127 ln(1 + f / 700); triangles are linear in mel; high_freq <= 0 is an offset from Nyquist;
  the Nyquist bin gets zero weight. torchaudio builds them in float32: its weights differ by up to 1.4e-5.
  """
  mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
  high_freq = high_freq + sample_rate / 2 if high_freq <= 0.0 else high_freq
  delta = (mel(high_freq) - mel(low_freq)) / (num_bins + 1)
  bin_M = np.arange(num_bins)
  left_M, center_M, right_M = (mel(low_freq) + (bin_M + k) * delta for k in (0.0, 1.0, 2.0))
  mel_F = mel(sample_rate / n_fft * np.arange(n_fft // 2))[:, None]
  up_FxM = (mel_F - left_M) / (center_M - left_M)
  down_FxM = (right_M - mel_F) / (right_M - center_M)
  banks_FxM = np.pad(np.maximum(0.0, np.minimum(up_FxM, down_FxM)), ((0, 1), (0, 0)))
  banks_FxM.flags.writeable = False
  return banks_FxM


def _hann(length: int, periodic: bool) -> np.ndarray:
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / (length if periodic else length - 1))


def _frames(x_BxS: jax.Array, frame_length: int, hop: int) -> jax.Array:
  """(B, T, frame_length) frames starting every `hop` samples; T = 1 + (S - frame_length) // hop.

  Built from strided slices of gcd(frame_length, hop)-sample chunks (cheap to differentiate, unlike a gather).
  """
  B, S = x_BxS.shape
  T = max(0, 1 + (S - frame_length) // hop)
  g = math.gcd(frame_length, hop)
  if T == 0 or frame_length // g > 32:  # no frames, or too many slices: gather instead
    return x_BxS[:, np.arange(T)[:, None] * hop + np.arange(frame_length)]
  chunks_BxCxG = x_BxS[:, :S // g * g].reshape(B, S // g, g)
  step = hop // g
  return jnp.concatenate([chunks_BxCxG[:, k:k + (T - 1) * step + 1:step] for k in range(frame_length // g)], -1)


def _reflect_pad(wav_BxS: jax.Array, lengths_B: jax.Array | None, pad: int) -> jax.Array:
  """Reflect padding (torch 'reflect': the edge sample is not repeated) at both ends of each example.

  Like torch, needs pad < length; shorter examples get junk frames rather than an error.
  """
  if lengths_B is None:
    return jnp.pad(wav_BxS, ((0, 0), (pad, pad)), mode="reflect")
  S = wav_BxS.shape[1]
  last_Bx1 = lengths_B[:, None] - 1
  i_P = jnp.abs(jnp.arange(-pad, S + pad))
  i_BxP = jnp.where(i_P > last_Bx1, 2 * last_Bx1 - i_P, i_P)
  return jnp.take_along_axis(wav_BxS, jnp.clip(i_BxP, 0, S - 1), axis=1)


def _mel_magnitude(wav_BxS, lengths_B, sample_rate, n_fft, hop_length, win_length, n_mels, f_min, f_max, htk, norm):
  """Mel-filtered STFT magnitude (power 1), periodic Hann window zero-padded to n_fft, centred frames with
  reflect padding (torch.stft / librosa center=True). (B, S // hop_length + 1, n_mels)."""
  left = (n_fft - win_length) // 2
  window_N = np.pad(_hann(win_length, periodic=True), (left, n_fft - win_length - left))
  frames_BxTxN = _frames(_reflect_pad(wav_BxS, lengths_B, n_fft // 2), n_fft, hop_length)
  mag_BxTxF = jnp.abs(jnp.fft.rfft(frames_BxTxN * jnp.asarray(window_N, wav_BxS.dtype), axis=-1))
  fb_FxM = jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, htk, norm), wav_BxS.dtype)
  return jnp.matmul(mag_BxTxF, fb_FxM, precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames=("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min",
                                             "f_max", "log_floor"))
@_batched
def log_mel(wav_BxS, sample_rate: int = 24000, n_fft: int = 1024, win_length: int = 1024, hop_length: int = 256,
            n_mels: int = 100, f_min: float = 0.0, f_max: float | None = None, log_floor: float = 1e-5, *,
            lengths_B=None):
  """F5-TTS's Vocos mel: ln(max(MelSpectrogram(power=1, norm=None, mel_scale='htk')(wav), 1e-5)).

  (B, S // hop_length + 1, n_mels). Vocos' own feature extractor floors at 1e-7 instead (log_floor=1e-7).
  """
  mel_BxTxM = _mel_magnitude(wav_BxS, lengths_B, sample_rate, n_fft, hop_length, win_length, n_mels, f_min,
                             f_max, htk=True, norm=None)
  log_mel_BxTxM = jnp.log(jnp.maximum(mel_BxTxM, log_floor))
  if lengths_B is None:
    return log_mel_BxTxM
  return log_mel_BxTxM, lengths_B // hop_length + 1


@functools.partial(jax.jit, static_argnames=("sample_rate", "configs"))
@_batched
def multi_res_log_mel(wav_BxS, sample_rate: int, configs=DAC_MEL_CONFIGS, *, lengths_B=None):
  """DAC's multi-scale mel loss features: one log10(max(mel, 1e-5)) per (n_fft, hop, win, n_mels) config.

  As audiotools' AudioSignal.mel_spectrogram (descript-audiotools 0.7.2) computes them for DAC: |STFT|
  (power 1), periodic Hann, centred frames with reflect padding, librosa's default Slaney mel filters
  (f_min 0, f_max Nyquist). DAC's config uses pow=1, clamp_eps=1e-5. A list of (B, S // hop + 1, n_mels).
  `configs` is static, so a tuple of tuples.
  """
  mels = [jnp.log10(jnp.maximum(_mel_magnitude(wav_BxS, lengths_B, sample_rate, n_fft, hop, win, n_mels, 0.0, None,
                                               htk=False, norm="slaney"), 1e-5))
          for n_fft, hop, win, n_mels in configs]
  if lengths_B is None:
    return mels
  return mels, [lengths_B // hop + 1 for _, hop, _, _ in configs]


@functools.partial(jax.jit, static_argnames=("sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms",
                                             "window_type"))
@_batched
def kaldi_fbank(wav_BxS, sample_rate: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
                frame_shift_ms: float = 10.0, window_type: str = "hanning", *, lengths_B=None):
  """AST's features: `torchaudio.compliance.kaldi.fbank(wav, htk_compat=True, sample_frequency=sample_rate,
  use_energy=False, window_type='hanning', num_mel_bins=num_mel_bins, dither=0.0, frame_shift=frame_shift_ms)`.

  The Kaldi defaults that call keeps: frames lie wholly inside the signal (snip_edges), each frame loses its
  mean, pre-emphasis 0.97, symmetric Hann window, FFT size rounded up to a power of two, power spectrum,
  Kaldi mel banks from 20 Hz to Nyquist, ln floored at float32 epsilon. (B, 1 + (S - window) // shift,
  num_mel_bins). AST subtracts the waveform's mean first; per-frame mean removal makes that a no-op.
  window_type="povey" is Kaldi's default window, the Hann window to the power 0.85.
  """
  if window_type not in ("hanning", "povey"):
    raise ValueError(f"window_type must be 'hanning' or 'povey', got {window_type!r}")
  window_size = int(sample_rate * frame_length_ms * 0.001)  # Kaldi's truncation, in this order
  window_shift = int(sample_rate * frame_shift_ms * 0.001)
  n_fft = 1 << (window_size - 1).bit_length()
  frames_BxTxN = _frames(wav_BxS, window_size, window_shift)
  frames_BxTxN = frames_BxTxN - frames_BxTxN.mean(-1, keepdims=True)
  frames_BxTxN = frames_BxTxN - 0.97 * jnp.concatenate([frames_BxTxN[..., :1], frames_BxTxN[..., :-1]], -1)
  window_N = _hann(window_size, periodic=False) ** (0.85 if window_type == "povey" else 1.0)
  frames_BxTxN = frames_BxTxN * jnp.asarray(window_N, wav_BxS.dtype)
  spectrum_BxTxF = jnp.fft.rfft(frames_BxTxN, n=n_fft, axis=-1)
  power_BxTxF = jnp.real(spectrum_BxTxF) ** 2 + jnp.imag(spectrum_BxTxF) ** 2
  banks_FxM = jnp.asarray(kaldi_mel_banks(num_mel_bins, n_fft, sample_rate), wav_BxS.dtype)
  fbank_BxTxM = jnp.log(jnp.maximum(jnp.matmul(power_BxTxF, banks_FxM, precision=_HIGHEST), _KALDI_EPSILON))
  if lengths_B is None:
    return fbank_BxTxM
  return fbank_BxTxM, jnp.maximum(0, (lengths_B - window_size) // window_shift + 1)


@functools.partial(jax.jit, static_argnames=("stride",))
@_batched
def w2vbert_features(wav_BxS, stride: int = 2, *, lengths_B=None):
  """w2v-BERT 2.0's input, as transformers' `SeamlessM4TFeatureExtractor` computes it from 16 kHz audio in [-1, 1].

  Kaldi fbank (80 bins, povey window, 25/10 ms) of the audio scaled to 16-bit integers, each bin normalised over
  the utterance's frames (mean, unbiased variance + 1e-7), zero frames appended up to a multiple of `stride`
  (its `pad_to_multiple_of=2`), then each `stride` consecutive frames concatenated: (B, ceil(T / stride),
  80 · stride), T = 1 + (S - 400) // 160. With `lengths_B`, statistics use each example's own frames and its
  later frames are zero, as the extractor pads a batch; the second output is frames // stride (the
  stacked frames its attention mask keeps).
  """
  fbank_BxTxM = kaldi_fbank(wav_BxS * 32768.0, 16000, 80, window_type="povey")
  B, T, M = fbank_BxTxM.shape
  frames_B = jnp.full((B,), T) if lengths_B is None else jnp.maximum(0, (lengths_B - 400) // 160 + 1)
  valid_BxTx1 = (jnp.arange(T) < frames_B[:, None])[..., None]
  count_Bx1x1 = frames_B[:, None, None].astype(fbank_BxTxM.dtype)
  mean_Bx1xM = jnp.sum(jnp.where(valid_BxTx1, fbank_BxTxM, 0.0), 1, keepdims=True) / count_Bx1x1
  centred_BxTxM = jnp.where(valid_BxTx1, fbank_BxTxM - mean_Bx1xM, 0.0)
  var_Bx1xM = jnp.sum(centred_BxTxM ** 2, 1, keepdims=True) / (count_Bx1x1 - 1)
  normed_BxTxM = jnp.pad(centred_BxTxM / jnp.sqrt(var_Bx1xM + 1e-7), ((0, 0), (0, -T % stride), (0, 0)))
  stacked_BxNxF = normed_BxTxM.reshape(B, -1, M * stride)
  if lengths_B is None:
    return stacked_BxNxF
  return stacked_BxNxF, frames_B // stride


@functools.partial(jax.jit, static_argnames=("n_mels", "sample_rate", "n_fft", "win_length", "hop_length",
                                             "preemphasis", "normalize", "mean", "std"))
@_batched
def parakeet_features(wav_BxS, n_mels: int = 80, sample_rate: int = 16000, n_fft: int = 512, win_length: int = 400,
                      hop_length: int = 160, preemphasis: float = 0.97, *, lengths_B=None, normalize: bool = True,
                      mean: float = 0.0, std: float = 1.0):
  """FastConformer's (NeMo's) input, as transformers' `ParakeetFeatureExtractor` computes it: pre-emphasis,
  |STFT|² (symmetric Hann of `win_length` centred in `n_fft`, centred frames with zero padding), slaney mel,
  ln(mel + 2⁻²⁴), then each bin normalised over the utterance's frames (mean, unbiased std + 1e-5; with
  `normalize=False` by the fixed `mean` and `std` instead, as NeMo's streaming models' "NA" and `fixed_mean`) and
  padded frames zeroed. (B, 1 + S // hop_length,
  n_mels); with `lengths_B`, also the valid frames lengths_B // hop_length.
  """
  B, S = wav_BxS.shape
  given = lengths_B is not None
  lengths_B = jnp.asarray(lengths_B) if given else jnp.full((B,), S)
  valid_BxS = jnp.arange(S) < lengths_B[:, None]
  wav_BxS = jnp.where(valid_BxS, wav_BxS, 0.0)
  wav_BxS = jnp.where(valid_BxS, jnp.concatenate([wav_BxS[:, :1], wav_BxS[:, 1:] - preemphasis * wav_BxS[:, :-1]], 1),
                      0.0)
  left = (n_fft - win_length) // 2
  window_N = np.pad(_hann(win_length, periodic=False), (left, n_fft - win_length - left))
  frames_BxTxN = _frames(jnp.pad(wav_BxS, ((0, 0), (n_fft // 2, n_fft // 2))), n_fft, hop_length)
  spectrum_BxTxF = jnp.fft.rfft(frames_BxTxN * jnp.asarray(window_N, wav_BxS.dtype), axis=-1)
  power_BxTxF = jnp.real(spectrum_BxTxF) ** 2 + jnp.imag(spectrum_BxTxF) ** 2
  fb_FxM = jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, 0.0, sample_rate / 2, False, "slaney"),
                       wav_BxS.dtype)
  log_mel_BxTxM = jnp.log(jnp.matmul(power_BxTxF, fb_FxM, precision=_HIGHEST) + 2.0 ** -24)
  T = log_mel_BxTxM.shape[1]
  frames_B = (lengths_B + n_fft // 2 * 2 - n_fft) // hop_length
  valid_BxTx1 = (jnp.arange(T) < frames_B[:, None])[..., None]
  if not normalize:
    log_mel_BxTxM = jnp.where(valid_BxTx1, (log_mel_BxTxM - mean) / std, 0.0)
    return (log_mel_BxTxM, frames_B) if given else log_mel_BxTxM
  count_Bx1x1 = frames_B[:, None, None].astype(log_mel_BxTxM.dtype)
  mean_Bx1xM = jnp.sum(jnp.where(valid_BxTx1, log_mel_BxTxM, 0.0), 1, keepdims=True) / count_Bx1x1
  centred_BxTxM = jnp.where(valid_BxTx1, log_mel_BxTxM - mean_Bx1xM, 0.0)
  std_Bx1xM = jnp.sqrt(jnp.sum(centred_BxTxM ** 2, 1, keepdims=True) / (count_Bx1x1 - 1))
  normed_BxTxM = centred_BxTxM / (std_Bx1xM + 1e-5)
  return (normed_BxTxM, frames_B) if given else normed_BxTxM


def pad_or_crop_frames(fbank_BxTxM, num_frames: int = 1024, frames_B=None):
  """AST's fixed-length input (1024 frames for AudioSet): zero frames from each example's `frames_B` on,
  zero-pad or crop to `num_frames`. AST pads with zeros *before* `ast_normalize`, as here."""
  T = fbank_BxTxM.shape[-2]
  if frames_B is not None:
    valid_BxT = jnp.arange(T) < jnp.asarray(frames_B)[..., None]
    fbank_BxTxM = jnp.where(valid_BxT[..., None], fbank_BxTxM, 0.0)
  if T < num_frames:
    fbank_BxTxM = jnp.pad(fbank_BxTxM, [(0, 0)] * (fbank_BxTxM.ndim - 2) + [(0, num_frames - T), (0, 0)])
  return fbank_BxTxM[..., :num_frames, :]


def ast_normalize(fbank, mean: float = AST_MEAN, std: float = AST_STD):
  """AST's input normalisation, (fbank - mean) / (2 std), with the AudioSet statistics by default."""
  return (fbank - mean) / (std * 2)
