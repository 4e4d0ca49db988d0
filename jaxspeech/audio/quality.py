"""Speech-synthesis metrics against ground-truth audio: mel-cepstral distortion after DTW alignment, duration ratio,
STOI and wideband PESQ (numpy code, on the host).

MCD (Kubichek 1993) between aligned frames x, y of mel-cepstra c_1..c_D (c_0, the energy, left out):
    MCD = (10 / ln 10) · sqrt(2 · Σ_d (c_d(x) − c_d(y))²)   in dB, averaged over the DTW path.
The formula assumes the real cepstrum's scale: over the M bins of the natural-log mel magnitude spectrum L
(`jaxspeech.audio.features.log_mel`), L(k) = c_0 + 2 Σ_m c_m cos(π m (k + ½) / M), i.e. c = DCT-II(L) / (2M).
(The orthonormal DCT would be √(2M) times larger: 12.6× at 80 bins.) A gain change moves c_0 only.
"""

import numpy as np
import pesq as pesq_lib
import pystoi
import scipy.fft
import scipy.spatial

from jaxspeech.audio import features

MCD_SCALE = 10.0 / np.log(10.0) * np.sqrt(2.0)


def mel_cepstrum(wav_S: np.ndarray, sample_rate: int, num_coefficients: int = 24, num_mels: int = 80) -> np.ndarray:
  """(T, num_coefficients) mel-cepstra c_1..c_D, 25 ms windows every 10 ms."""
  hop, window = sample_rate // 100, sample_rate // 40
  log_mel_TxM = np.asarray(features.log_mel(np.asarray(wav_S, np.float32)[None], sample_rate=sample_rate,
                                            n_fft=window, win_length=window, hop_length=hop, n_mels=num_mels)[0])
  return cepstrum(log_mel_TxM, num_coefficients)


def cepstrum(log_spectrum_TxM: np.ndarray, num_coefficients: int) -> np.ndarray:
  """c_1..c_D of each frame's log spectrum L: L(k) = c_0 + 2 Σ_m c_m cos(π m (k + ½) / M)."""
  m = log_spectrum_TxM.shape[-1]
  return scipy.fft.dct(log_spectrum_TxM, type=2, axis=-1)[:, 1:num_coefficients + 1] / (2 * m)


def dtw_path(cost_TxU: np.ndarray) -> tuple[float, np.ndarray]:
  """(accumulated cost, path (P, 2) of index pairs) of the cheapest monotone alignment with steps (1,1), (0,1), (1,0)."""
  t, u = cost_TxU.shape
  acc = np.full((t + 1, u + 1), np.inf)
  acc[0, 0] = 0.0
  for k in range(2, t + u + 1):  # one anti-diagonal i + j = k at a time: its cells depend on earlier ones only
    i = np.arange(max(1, k - u), min(t, k - 1) + 1)
    j = k - i
    acc[i, j] = np.minimum(np.minimum(acc[i - 1, j - 1], acc[i - 1, j]), acc[i, j - 1]) + cost_TxU[i - 1, j - 1]
  path, i, j = [], t, u
  while i > 0 and j > 0:
    path.append((i - 1, j - 1))
    step = np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]])
    i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
  return float(acc[t, u]), np.asarray(path[::-1])


def mcd_dtw(reference_S: np.ndarray, synthesized_S: np.ndarray, sample_rate: int) -> float:
  """Mean MCD (dB) over the DTW alignment of the two clips' mel-cepstra."""
  ref_TxD, syn_UxD = mel_cepstrum(reference_S, sample_rate), mel_cepstrum(synthesized_S, sample_rate)
  distance_TxU = MCD_SCALE * scipy.spatial.distance.cdist(ref_TxD, syn_UxD)
  _, path = dtw_path(distance_TxU)
  return float(distance_TxU[path[:, 0], path[:, 1]].mean())


def duration_ratio(reference_S: np.ndarray, synthesized_S: np.ndarray) -> float:
  return len(synthesized_S) / max(len(reference_S), 1)


def score(truth_S: np.ndarray, wav_S: np.ndarray, sample_rate: int, embed=None) -> dict[str, float]:
  """One utterance's row: seconds of both, duration ratio, MCD-DTW (dB; none for empty audio) and, with `embed`
  (audio → speaker embedding), `speaker_similarity`, the cosine of the two embeddings."""
  row = {"truth_seconds": len(truth_S) / sample_rate, "seconds": len(wav_S) / sample_rate,
         "duration_ratio": duration_ratio(truth_S, wav_S)}
  if len(wav_S):
    row["mcd_dtw"] = mcd_dtw(truth_S, wav_S, sample_rate)
    if embed is not None:
      a, b = embed(truth_S), embed(wav_S)
      row["speaker_similarity"] = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
  return row


def means(rows: list[dict], metrics: tuple[str, ...]) -> dict[str, float]:
  """The mean of each metric over the rows that have it."""
  return {name: float(np.mean([r[name] for r in rows if name in r])) for name in metrics
          if any(name in r for r in rows)}


def table(rows: list[dict], row_means: dict[str, float], columns: tuple[tuple[str, str, int], ...]) -> str:
  """One line per utterance (index, speaker, seconds, then each (key, header, width) column, text), then the means."""
  def cell(value, width):
    return f"{value:>{width}.2f}" if value is not None else " " * (width - 1) + "-"

  lines = [f"{'#':>3} {'speaker':<10} {'truth s':>7} {'synth s':>7} "
           + " ".join(f"{header:>{width}}" for _, header, width in columns) + "  text"]
  for r in rows:
    lines.append(f"{r['index']:>3} {r['speaker']:<10} {r['truth_seconds']:>7.2f} {r['seconds']:>7.2f} "
                 + " ".join(cell(r.get(key), width) for key, _, width in columns) + f"  {r['text'][:40]}")
  lines.append(f"{'mean':<30} " + " ".join(cell(row_means.get(key), width) for key, _, width in columns)
               + f"   (n={len(rows)})")
  return "\n".join(lines)


PESQ_RATE = 16_000   # PESQ wideband is defined at 16 kHz


def scores(ref_BxS, deg_BxS, lengths_B, valid_B, sample_rate):
  """(STOI, PESQ) per row as float32; 0 for rows that are not valid, PESQ -1 where it cannot score."""
  stoi_B, pesq_B = np.zeros(len(ref_BxS), np.float32), np.zeros(len(ref_BxS), np.float32)
  for i in np.flatnonzero(valid_B):
    ref, deg = np.asarray(ref_BxS[i, :lengths_B[i]], np.float64), np.asarray(deg_BxS[i, :lengths_B[i]], np.float64)
    stoi_B[i] = pystoi.stoi(ref, deg, sample_rate)
    if sample_rate == PESQ_RATE:
      score = pesq_lib.pesq(PESQ_RATE, ref, deg, "wb", on_error=pesq_lib.PesqError.RETURN_VALUES)
      pesq_B[i] = score if np.isfinite(score) else -1.0   # NaN on (near-)silent output
  return stoi_B, pesq_B
