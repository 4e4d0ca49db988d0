"""Audio features against their references (librosa; torchaudio's kaldi.py, see fetch_reference.py) on real speech.

float32 STFTs carry errors of ~1e-7 of each frame's peak, so float32 comparisons hold tight tolerances only on
bins within 60 dB of their frame's peak; float64 runs (jax.enable_x64) check every bin.
"""

import importlib.util
import math
import os
import pathlib
import sys
import types
import warnings

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import torch
import transformers

from jaxspeech.audio import features, istft
from jaxspeech.audio.io import resample, to_float
from jaxspeech.data.synth import espeak

UTTERANCES = (("Hello there.", "en-us+m3"),
              ("The quick brown fox jumps over the lazy dog.", "en-us+f3"),
              ("She sells sea shells by the sea shore, quietly, in the evening light.", "en+f2"),
              ("Why? Because I said so!", "en+m7"))
_60_DB = 1e-3  # magnitude ratio; 1e-6 in power


@pytest.fixture(scope="module")
def speech():
  """{sample_rate: list of float32 utterances}, from espeak at 22,050 Hz, resampled."""
  wavs = [to_float(espeak.synthesize(text, voice)) for text, voice in UTTERANCES]
  return {sr: [resample(w, espeak.SAMPLE_RATE, sr) for w in wavs] for sr in (16000, 24000)}


def _pad_batch(wavs):
  lengths_B = np.array([len(w) for w in wavs])
  return np.stack([np.pad(w, (0, lengths_B.max() - len(w))) for w in wavs]), lengths_B


@pytest.fixture(scope="module")
def kaldi_ref():
  """torchaudio 2.11.0's compliance/kaldi.py, loaded on its own with a stub `torchaudio` package."""
  default = pathlib.Path(__file__).parents[1] / ".cache/reference"
  reference = pathlib.Path(os.environ.get("JAXSPEECH_REFERENCE", default))
  path = reference / "torchaudio/compliance/kaldi.py"
  if not path.exists():
    pytest.fail(f"{path} is missing; fetch it with `python tests/fetch_reference.py {reference}` (`make test` does)")
  spec = importlib.util.spec_from_file_location("torchaudio_compliance_kaldi", path)
  module = importlib.util.module_from_spec(spec)
  with pytest.MonkeyPatch.context() as patch:  # kaldi.py imports torchaudio only for mfcc's DCT
    patch.setitem(sys.modules, "torchaudio", types.ModuleType("torchaudio"))
    spec.loader.exec_module(module)
  return module


def _ast_fbank(kaldi_ref, wav, dtype):
  """AST's dataloader call (audioset dataloader.py `_wav2fbank`)."""
  waveform = torch.from_numpy(wav).to(dtype)[None]
  waveform = waveform - waveform.mean()
  return kaldi_ref.fbank(waveform, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                         num_mel_bins=128, dither=0.0, frame_shift=10).numpy().astype(np.float64)


def _librosa_mel(wav, sr, n_fft, hop, win, n_mels, htk, norm):
  with warnings.catch_warnings():  # DAC's 320 Slaney mels over 1025 bins leave some filters empty
    warnings.simplefilter("ignore", UserWarning)
    return librosa.feature.melspectrogram(y=wav.astype(np.float64), sr=sr, n_fft=n_fft, hop_length=hop, win_length=win,
                                          window="hann", center=True, pad_mode="reflect", power=1.0, n_mels=n_mels,
                                          fmin=0.0, fmax=sr / 2, htk=htk, norm=norm, dtype=np.float64).T


def _near_peak(ref_TxM, ratio):
  return ref_TxM >= ratio * ref_TxM.max(-1, keepdims=True)


@pytest.mark.parametrize("sr,n_fft,n_mels,htk,norm", [(24000, 1024, 100, True, None), (16000, 400, 80, True, None),
                                                      (24000, 2048, 320, False, "slaney"), (16000, 32, 5, False, "slaney")])
def test_mel_filterbank_matches_librosa(sr, n_fft, n_mels, htk, norm):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, htk=htk, norm=norm, dtype=np.float64).T
  fb_FxM = features.mel_filterbank(sr, n_fft, n_mels, htk=htk, norm=norm)
  np.testing.assert_allclose(fb_FxM, ref, rtol=1e-10, atol=1e-13)


def test_log_mel_matches_librosa(speech):
  """Padded float32 batch vs librosa per utterance: |Δ ln mel| ≤ 1e-4 within 60 dB of each frame's peak."""
  wavs = speech[24000]
  batch_BxS, lengths_B = _pad_batch(wavs)
  mel_BxTxM, frames_B = features.log_mel(batch_BxS, lengths_B=lengths_B)
  for wav, mel_TxM, frames in zip(wavs, np.asarray(mel_BxTxM), np.asarray(frames_B)):
    ref_TxM = _librosa_mel(wav, 24000, 1024, 256, 1024, 100, htk=True, norm=None)
    assert frames == ref_TxM.shape[0] == len(wav) // 256 + 1
    near = _near_peak(ref_TxM, _60_DB) & (ref_TxM > 1e-5)
    np.testing.assert_allclose(mel_TxM[:frames][near], np.log(ref_TxM[near]), rtol=0, atol=1e-4)


def test_log_mel_float64_matches_librosa_everywhere(speech):
  with jax.enable_x64(True):
    for wav in speech[24000][:2]:
      ref = np.log(np.maximum(_librosa_mel(wav, 24000, 1024, 256, 1024, 100, htk=True, norm=None), 1e-5))
      np.testing.assert_allclose(features.log_mel(wav.astype(np.float64)), ref, rtol=0, atol=1e-9)


def test_multi_res_log_mel_matches_dac_convention(speech):
  """DAC's seven scales at 24 kHz vs librosa: |Δ log10 mel| ≤ 1e-4 within 60 dB (float32); ≤ 1e-9 (float64)."""
  wavs = speech[24000][:2]
  batch_BxS, lengths_B = _pad_batch(wavs)
  mels, frames = features.multi_res_log_mel(batch_BxS, 24000, lengths_B=lengths_B)
  with jax.enable_x64(True):
    mels64 = features.multi_res_log_mel(wavs[0].astype(np.float64), 24000)
  for config, mel_BxTxM, frames_B, mel64_TxM in zip(features.DAC_MEL_CONFIGS, mels, frames, mels64):
    n_fft, hop, win, n_mels = config
    refs = [_librosa_mel(wav, 24000, n_fft, hop, win, n_mels, htk=False, norm="slaney") for wav in wavs]
    for ref_TxM, mel_TxM, n in zip(refs, np.asarray(mel_BxTxM), np.asarray(frames_B)):
      assert n == ref_TxM.shape[0]
      near = _near_peak(ref_TxM, _60_DB) & (ref_TxM > 1e-5)
      np.testing.assert_allclose(mel_TxM[:n][near], np.log10(ref_TxM[near]), rtol=0, atol=1e-4)
    np.testing.assert_allclose(mel64_TxM, np.log10(np.maximum(refs[0], 1e-5)), rtol=0, atol=1e-9)


def test_kaldi_mel_banks_match_torchaudio(kaldi_ref):
  """torchaudio builds the banks in float32 (a few ulp in mel), ours in float64: weights differ by ≤ 3e-5."""
  ref_MxF, _ = kaldi_ref.get_mel_banks(128, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
  banks_FxM = features.kaldi_mel_banks(128, 512, 16000)
  np.testing.assert_allclose(banks_FxM[:-1], ref_MxF.numpy().T, rtol=0, atol=3e-5)
  assert not banks_FxM[-1].any()


def test_kaldi_fbank_matches_torchaudio(speech, kaldi_ref):
  """Padded float32 batch vs AST's float32 torchaudio call: |Δ| ≤ 5e-4 within 60 dB, ≤ 5e-3 elsewhere.

  torchaudio's own float32 and float64 results differ by up to 2e-4 within 60 dB and 1.6e-3 elsewhere on
  these utterances; float32 STFT noise dominates both.
  """
  wavs = speech[16000]
  batch_BxS, lengths_B = _pad_batch(wavs)
  fbank_BxTxM, frames_B = features.kaldi_fbank(batch_BxS, lengths_B=lengths_B)
  for wav, fbank_TxM, frames in zip(wavs, np.asarray(fbank_BxTxM), np.asarray(frames_B)):
    ref_TxM = _ast_fbank(kaldi_ref, wav, torch.float32)
    assert frames == ref_TxM.shape[0] == 1 + (len(wav) - 400) // 160
    near = ref_TxM >= ref_TxM.max(-1, keepdims=True) + math.log(_60_DB**2)
    np.testing.assert_allclose(fbank_TxM[:frames][near], ref_TxM[near], rtol=0, atol=5e-4)
    np.testing.assert_allclose(fbank_TxM[:frames], ref_TxM, rtol=0, atol=5e-3)


def test_kaldi_fbank_float64_matches_torchaudio_everywhere(speech, kaldi_ref):
  """In float64 only torchaudio's float32-built mel banks differ (test above): |Δ| ≤ 2e-4 on every bin."""
  with jax.enable_x64(True):
    for wav in speech[16000][:2]:
      ref_TxM = _ast_fbank(kaldi_ref, wav, torch.float64)
      np.testing.assert_allclose(features.kaldi_fbank(wav.astype(np.float64)), ref_TxM, rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", ["log_mel", "kaldi_fbank", "multi_res_log_mel"])
def test_padded_batch_equals_single_examples(speech, name):
  """A padded batch with lengths_B gives each example's unbatched features on its valid frames (≤ 1e-6)."""
  fn = {"log_mel": features.log_mel, "kaldi_fbank": features.kaldi_fbank,
        "multi_res_log_mel": lambda w, **kw: features.multi_res_log_mel(w, 16000, ((512, 128, 512, 80),), **kw)}[name]
  wavs = speech[16000][:3]
  batch_BxS, lengths_B = _pad_batch(wavs)
  batched, frames_B = jax.tree.map(np.asarray, fn(batch_BxS, lengths_B=lengths_B))
  for i, wav in enumerate(wavs):
    single, frames = jax.tree.map(np.asarray, fn(wav, lengths_B=len(wav)))
    for x_BxTxM, n_B, x_TxM, n in zip(*map(jax.tree.leaves, (batched, frames_B, single, frames))):
      assert n_B[i] == n == x_TxM.shape[0]
      np.testing.assert_allclose(x_BxTxM[i, :n], x_TxM, rtol=0, atol=1e-6)


def test_vmap_matches_batch_and_jit_traces_once(speech):
  batch_BxS, _ = _pad_batch(speech[24000][:2])
  np.testing.assert_allclose(jax.vmap(features.log_mel)(batch_BxS), features.log_mel(batch_BxS), rtol=0, atol=1e-6)
  traces = []

  def loss(wav_BxS):
    traces.append(wav_BxS.shape)
    return sum(m.mean() for m in features.multi_res_log_mel(wav_BxS, 24000)) + features.log_mel(wav_BxS).mean()

  grad = jax.jit(jax.grad(loss))
  for scale in (1.0, 0.5):
    assert np.isfinite(grad(jnp.asarray(batch_BxS * scale))).all()
  assert len(traces) == 1


def test_ast_pad_crop_and_normalize(speech, kaldi_ref):
  """AST's dataloader: zero-pad (ZeroPad2d) or crop the fbank to the target length, then (x - mean) / (2 std).

  Tolerance 6e-4: the fbank tolerance (5e-3) over 2 std.
  """
  wav = speech[16000][0]
  fbank_TxM = features.kaldi_fbank(wav)
  for target in (50, 1024):
    ref = torch.from_numpy(_ast_fbank(kaldi_ref, wav, torch.float32))
    p = target - ref.shape[0]
    ref = torch.nn.ZeroPad2d((0, 0, 0, p))(ref) if p > 0 else ref[:target]
    ref = (ref - (-4.2677393)) / (4.5689974 * 2)
    ours = features.ast_normalize(features.pad_or_crop_frames(fbank_TxM, target))
    assert ours.shape == (target, 128)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=6e-4)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 3)), jnp.float32)
  np.testing.assert_allclose(features.ast_normalize(x, 1.5, 2.0), (x - 1.5) / 4.0, rtol=1e-6)
  padded = features.pad_or_crop_frames(x, 9, frames_B=jnp.array([7, 4]))
  np.testing.assert_array_equal(padded[0, :7], x[0])
  np.testing.assert_array_equal(padded[1, :4], x[1, :4])
  assert not padded[0, 7:].any() and not padded[1, 4:].any()


@pytest.mark.parametrize("n", [1280, 15])
def test_tpu_inverse_dft_matmul_is_irfft(n):
  """The TPU path of the ISTFT (irfft as a matmul) against jnp.fft.irfft, DC/Nyquist imaginary parts included."""
  rng = np.random.default_rng(0)
  spec = (rng.normal(size=(2, 5, n // 2 + 1)) + 1j * rng.normal(size=(2, 5, n // 2 + 1))).astype(np.complex64)
  np.testing.assert_allclose(istft.irfft_matmul(jnp.asarray(spec), n), np.fft.irfft(spec, n, axis=-1),
                             atol=2e-6 * math.sqrt(n), rtol=0)


def test_parakeet_features_match_transformers(speech):
  """A padded batch of two clips against `ParakeetFeatureExtractor` (its own padding and mask); float32, 2e-4
  abs on normalised features (measured 4.4e-5; features have unit variance)."""
  extractor = transformers.ParakeetFeatureExtractor()
  long = np.concatenate(speech[16000])
  clips = [long[:16000], long[3000:12000]]
  ref = extractor(clips, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
  wav_BxS = np.zeros((2, 16000), np.float32)
  for i, clip in enumerate(clips):
    wav_BxS[i, :len(clip)] = clip
  ours, frames_B = features.parakeet_features(wav_BxS, lengths_B=np.array([16000, 9000]))
  mask = np.asarray(ref["attention_mask"], bool)
  np.testing.assert_array_equal(np.arange(ours.shape[1]) < np.asarray(frames_B)[:, None], mask)
  np.testing.assert_allclose(np.asarray(ours)[mask], ref["input_features"][mask], atol=2e-4)
  np.testing.assert_array_equal(np.asarray(ours)[~mask], 0.0)
