"""Our jitted sampler against f5-tts' CFM.sample: same weights, same noise, same steps, float32 on CPU."""

import numpy as np
import pytest
import torch

from jaxspeech.dit import sample
from jaxspeech.dit.model import DiTConfig
from tests.helpers import dit as ref

ATOL = 1e-4  # max abs difference of the sampled mel, float32
CFG = DiTConfig(dim=48, depth=2, heads=3, dim_head=16, ff_mult=2, mel_dim=12, text_num_embeds=20, text_dim=16,
                conv_layers=1)
SEED = 7


def f5_noise(durations, mel_dim: int) -> np.ndarray:
  """CFM.sample's noise: per example, torch.manual_seed(seed) then randn(duration, mel), zero-padded."""
  noise = np.zeros((len(durations), max(durations), mel_dim), np.float32)
  for i, d in enumerate(durations):
    torch.manual_seed(SEED)
    noise[i, :d] = torch.randn(d, mel_dim).numpy()
  return noise


@pytest.fixture(scope="module")
def models():
  f5 = ref.f5_backbone(CFG, seed=2)
  return f5, ref.ours_from(f5, CFG)


RUNS = {  # (method, nfe, cfg_strength, sway, ref frames, durations)
    "euler-epss7-cfg2-sway-batched": ("euler", 7, 2.0, -1.0, (10, 6), (30, 21)),
    "midpoint-uniform9-cfg0-single": ("midpoint", 9, 0.0, None, (8,), (25,)),
    "euler-uniform8-cfg1.5-sway0.5-batched": ("euler", 8, 1.5, 0.5, (5, 9, 7), (18, 26, 14)),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_sample_matches_cfm_sample(models, run):
  f5, ours = models
  method, nfe, cfg_strength, sway, ref_frames, durations = RUNS[run]
  rng = np.random.default_rng(0)
  b = len(durations)
  ref_mel = rng.standard_normal((b, max(ref_frames), CFG.mel_dim)).astype(np.float32)
  text = np.full((b, 14), -1, np.int64)
  for i in range(b):
    text[i, :8 + 2 * i] = rng.integers(0, CFG.text_num_embeds, 8 + 2 * i)
  cfm = ref.CFM(transformer=f5, num_channels=CFG.mel_dim, odeint_kwargs=dict(method=method))
  with torch.no_grad():
    want, _ = cfm.sample(cond=torch.from_numpy(ref_mel), text=torch.from_numpy(text),
                         duration=torch.tensor(durations), lens=torch.tensor(ref_frames), steps=nfe,
                         cfg_strength=cfg_strength, sway_sampling_coef=sway, seed=SEED)
  got, duration_B, _ = sample.sample(ours, ref_mel, ref_frames, text, durations,
                                  noise_BxLxM=f5_noise(durations, CFG.mel_dim), nfe=nfe, cfg_strength=cfg_strength,
                                  sway=sway, method=method)
  assert list(duration_B) == list(durations)
  valid = np.arange(max(durations))[None] < np.asarray(durations)[:, None]
  np.testing.assert_allclose(np.asarray(got)[valid], want.numpy()[valid], atol=ATOL, rtol=0)


def test_timesteps_are_f5s():
  np.testing.assert_allclose(sample.timesteps(7, None), np.array([0, 2, 4, 6, 8, 16, 24, 32]) / 32)
  t = np.linspace(0, 1, 33)
  np.testing.assert_allclose(sample.timesteps(32), t - (np.cos(np.pi / 2 * t) - 1 + t), atol=1e-6)


def test_duration_follows_the_reference_speaking_rate():
  assert sample.durations(100, "abcd", "abcdefgh") == 300
  assert sample.durations(100, "abcd", "abcdefgh", speed=2.0) == 200


def test_dopri5_matches_cfm_sample_with_torchdiffeqs_dopri5(models):
  """The adaptive solver against F5's CFM.sample through torchdiffeq's dopri5, both at tight tolerances (they
  place their steps differently: torchdiffeq interpolates t = 1 from a step past it, we end a step on it)."""
  f5, ours = models
  rng = np.random.default_rng(1)
  durations, ref_frames = (24, 17), (7, 5)
  ref_mel = rng.standard_normal((2, 7, CFG.mel_dim)).astype(np.float32)
  text = np.full((2, 12), -1, np.int64)
  text[0, :10], text[1, :12] = rng.integers(0, CFG.text_num_embeds, 10), rng.integers(0, CFG.text_num_embeds, 12)
  tolerances = dict(rtol=1e-6, atol=1e-7)
  cfm = ref.CFM(transformer=f5, num_channels=CFG.mel_dim, odeint_kwargs=dict(method="dopri5", **tolerances))
  with torch.no_grad():
    want, _ = cfm.sample(cond=torch.from_numpy(ref_mel), text=torch.from_numpy(text),
                         duration=torch.tensor(durations), lens=torch.tensor(ref_frames), steps=4,
                         cfg_strength=2.0, sway_sampling_coef=-1.0, seed=SEED)
  got = sample.sample(ours, ref_mel, ref_frames, text, durations, noise_BxLxM=f5_noise(durations, CFG.mel_dim),
                      cfg_strength=2.0, method="dopri5", **tolerances)
  valid = np.arange(max(durations))[None] < np.asarray(durations)[:, None]
  np.testing.assert_allclose(np.asarray(got.mel)[valid], want.numpy()[valid], atol=ATOL, rtol=0)
  assert 8 <= got.evaluations < 6 * 256 + 2
