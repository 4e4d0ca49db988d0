"""Codec GAN pieces: the discriminators against Vocos' (random init, weights copied), the losses, and the
stop-gradient split that lets one value_and_grad train the generator and the discriminators at once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests import reference_stubs

reference_stubs.stub_references()
from vocos import discriminators as vocos_disc  # noqa: E402
from vocos import loss as vocos_loss  # noqa: E402

from jaxspeech.gan import discriminators, losses  # noqa: E402
from jaxspeech.convert import mapping  # noqa: E402
from tests.helpers.ast import perturbed  # noqa: E402

TOL = 1e-4   # max abs difference of logits and feature maps, float32 on CPU


class TorchSpectrogram(torch.nn.Module):
  """torchaudio.transforms.Spectrogram(n_fft, hop_length, win_length, power=None) through torch.stft, which is
  what it calls (periodic Hann, centred, reflect padding, not normalised): torchaudio does not load here."""

  def __init__(self, n_fft, hop_length, win_length, power):
    super().__init__()
    assert power is None
    self.n_fft, self.hop, self.win = n_fft, hop_length, win_length

  def forward(self, x):
    return torch.stft(x, self.n_fft, self.hop, self.win, window=torch.hann_window(self.win), center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)


def copy_conv(ours: discriminators.Conv2d, theirs: torch.nn.Conv2d) -> None:
  state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
  ours.weight_v[...] = jnp.asarray(mapping.conv_from_hf(state["weight_v"], None))
  ours.weight_g[...] = jnp.asarray(state["weight_g"].reshape(-1))
  ours.bias[...] = jnp.asarray(state["bias"])


def check_outputs(ours, theirs_logits, theirs_fmaps, flat_logits: bool) -> None:
  logits, fmaps = ours
  assert len(logits) == len(theirs_logits) and len(fmaps) == len(theirs_fmaps)
  for a, b in zip(logits, theirs_logits):
    b = b.detach().numpy() if flat_logits else b.detach().permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(a), b, atol=TOL, rtol=0)
  for maps, theirs in zip(fmaps, theirs_fmaps, strict=True):
    assert len(maps) == len(theirs)
    for a, b in zip(maps, theirs):
      np.testing.assert_allclose(np.asarray(a), b.detach().permute(0, 2, 3, 1).numpy(), atol=TOL, rtol=0)


def _wavs(samples: int, seed: int):
  rng = np.random.default_rng(seed)
  return [(0.3 * rng.standard_normal((2, samples))).astype(np.float32) for _ in range(2)]


@pytest.mark.parametrize("periods,samples", [((2, 3, 5, 7, 11), 1500), ((2, 7), 1001)])
def test_multi_period_discriminator_matches_vocos(periods, samples):
  torch.manual_seed(0)
  ref = perturbed(vocos_disc.MultiPeriodDiscriminator(periods=periods), seed=1)
  ours = discriminators.MultiPeriodDiscriminator(periods, rngs=nnx.Rngs(0))
  for d_ours, d_ref in zip(ours.discriminators, ref.discriminators, strict=True):
    for c_ours, c_ref in zip(d_ours.convs, d_ref.convs, strict=True):
      copy_conv(c_ours, c_ref)
    copy_conv(d_ours.conv_post, d_ref.conv_post)
  real, fake = _wavs(samples, 2)
  with torch.no_grad():
    r_logits, g_logits, r_fmaps, g_fmaps = ref(torch.from_numpy(real), torch.from_numpy(fake))
  check_outputs(ours(jnp.asarray(real)), r_logits, r_fmaps, flat_logits=True)
  check_outputs(ours(jnp.asarray(fake)), g_logits, g_fmaps, flat_logits=True)


@pytest.mark.parametrize("traced_for", ["cpu", "tpu"])  # band by band; the bands as one grouped conv per layer
@pytest.mark.parametrize("windows,channels,samples", [((2048, 1024, 512), 32, 4000), ((256, 128), 8, 777)])
def test_multi_resolution_discriminator_matches_vocos(monkeypatch, windows, channels, samples, traced_for):
  monkeypatch.setattr(vocos_disc, "Spectrogram", TorchSpectrogram)
  monkeypatch.setattr(discriminators, "platform", lambda: traced_for)
  torch.manual_seed(0)
  ref = torch.nn.ModuleList([vocos_disc.DiscriminatorR(window_length=w, channels=channels) for w in windows])
  ref = perturbed(ref, seed=1)
  ours = discriminators.MultiResolutionDiscriminator(windows, channels, rngs=nnx.Rngs(0))
  for d_ours, d_ref in zip(ours.discriminators, ref, strict=True):
    assert d_ours.bands == tuple(d_ref.bands)
    for band_ours, band_ref in zip(d_ours.band_convs, d_ref.band_convs, strict=True):
      for c_ours, c_ref in zip(band_ours, band_ref, strict=True):
        copy_conv(c_ours, c_ref)
    copy_conv(d_ours.conv_post, d_ref.conv_post)
  (wav,) = _wavs(samples, 3)[:1]
  with torch.no_grad():
    theirs = [d(torch.from_numpy(wav)) for d in ref]
  check_outputs(ours(jnp.asarray(wav)), [t[0] for t in theirs], [t[1] for t in theirs], flat_logits=False)


def test_grouped_bands_have_the_gradients_of_band_by_band(monkeypatch):
  """The accelerator form of the resolution discriminator against the CPU form: outputs ≤ 1e-5, gradients of
  params and input ≤ 1e-3 of each one's largest (float32 sums over every position, in another order)."""
  ours = discriminators.MultiResolutionDiscriminator((512, 256), 8, rngs=nnx.Rngs(0))
  wav = jnp.asarray(_wavs(3000, 3)[0])

  def outputs_and_grads(traced_for):
    monkeypatch.setattr(discriminators, "platform", lambda: traced_for)
    def total(model, wav):
      return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(model(wav)))
    return jax.tree.leaves(ours(wav)), jax.tree.leaves(jax.grad(total, (0, 1))(ours, wav))
  (out_cpu, grad_cpu), (out_tpu, grad_tpu) = outputs_and_grads("cpu"), outputs_and_grads("tpu")
  assert len(out_cpu) == len(out_tpu) and len(grad_cpu) == len(grad_tpu)
  for a, b in zip(out_cpu, out_tpu):
    np.testing.assert_allclose(b, a, atol=1e-5)
  for a, b in zip(grad_cpu, grad_tpu):
    assert float(jnp.abs(b - a).max()) <= 1e-3 * float(jnp.abs(a).max())


def test_feature_matching_matches_vocos_per_discriminator():
  rng = np.random.default_rng(0)
  shapes = [[(2, 5, 3, 4), (2, 2, 3, 1)], [(2, 7, 2, 3)]]
  real = [[rng.standard_normal(s).astype(np.float32) for s in d] for d in shapes]
  fake = [[rng.standard_normal(s).astype(np.float32) for s in d] for d in shapes]
  theirs = vocos_loss.FeatureMatchingLoss()([[torch.from_numpy(x) for x in d] for d in real],
                                            [[torch.from_numpy(x) for x in d] for d in fake]) / len(shapes)
  ours = losses.feature_matching(jax.tree.map(jnp.asarray, real), jax.tree.map(jnp.asarray, fake))
  np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)


def test_lsgan_losses():
  real = [jnp.array([[1.0, 0.5]]), jnp.array([[[0.0]]])]
  fake = [jnp.array([[0.0, -1.0]]), jnp.array([[[2.0]]])]
  # D: mean over sub-discriminators of mean (1 - D(real))² + mean D(fake)²; G: of mean (1 - D(fake))².
  d_expected = ((0.0 + 0.25) / 2 + (0.0 + 1.0) / 2 + 1.0 + 4.0) / 2
  g_expected = ((1.0 + 4.0) / 2 + 1.0) / 2
  np.testing.assert_allclose(float(losses.lsgan_discriminator(real, fake)), d_expected, rtol=1e-6)
  np.testing.assert_allclose(float(losses.lsgan_generator(fake)), g_expected, rtol=1e-6)
