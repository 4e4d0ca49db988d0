"""Synthesis metrics: DTW against librosa's, MCD's invariances and ordering."""

import librosa
import numpy as np
import pytest

from jaxspeech.audio import quality

SR = 16_000


def tone(freqs, seconds: float, seed: int = 0) -> np.ndarray:
  t = np.arange(int(seconds * SR)) / SR
  noise = 0.01 * np.random.default_rng(seed).normal(size=t.size)
  return (sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs) * 0.5 + noise).astype(np.float32)


@pytest.mark.parametrize("shape", [(7, 7), (12, 5), (4, 9), (60, 170)])
def test_dtw_matches_librosa(shape):
  cost = np.random.default_rng(sum(shape)).random(shape)
  total, path = quality.dtw_path(cost)
  accumulated, reference_path = librosa.sequence.dtw(C=cost, backtrack=True)
  np.testing.assert_allclose(total, accumulated[-1, -1], rtol=1e-12)  # same recurrence, float64
  np.testing.assert_allclose(cost[path[:, 0], path[:, 1]].sum(), total, rtol=1e-12)
  assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (shape[0] - 1, shape[1] - 1)
  assert len(path) >= len(reference_path) - 2  # a path of the same cost (ties may take other steps)


def test_mcd_is_zero_for_the_same_clip_small_for_a_stretch_and_large_for_another_sound():
  voice = tone([220, 440, 660], 1.0)
  same = quality.mcd_dtw(voice, voice, SR)
  louder = quality.mcd_dtw(voice, 2.0 * voice, SR)  # gain moves c_0 only, which MCD leaves out
  slower = quality.mcd_dtw(voice, librosa.effects.time_stretch(voice, rate=0.8), SR)
  other = quality.mcd_dtw(voice, tone([1500, 3100], 1.0, seed=1), SR)
  assert same == 0.0 and louder < 0.05
  assert slower < other / 3, (slower, other)
  assert quality.duration_ratio(voice, voice[:8000]) == 0.5


def test_cepstrum_has_the_real_cepstrum_scale_mcd_assumes():
  """A log spectrum with one cosine ripple 2a·cos(π m (k+½)/M) has c_m = a, and MCD = (10/ln 10)·√2·|a|: the
  scale of Kubichek's formula (SPTK's mel-cepstra), not the orthonormal DCT's √(2M)× larger one."""
  m, a = 80, 0.3
  ripple_1xM = 2 * a * np.cos(np.pi * 3 * (np.arange(m) + 0.5) / m)[None]
  c = quality.cepstrum(ripple_1xM - 4.0, 24)
  np.testing.assert_allclose(c[0], np.eye(24)[2] * a, atol=1e-12)
  np.testing.assert_allclose(quality.MCD_SCALE * np.linalg.norm(c - quality.cepstrum(np.full((1, m), -4.0), 24)),
                             10 / np.log(10) * np.sqrt(2) * a, rtol=1e-12)
