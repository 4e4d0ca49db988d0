"""`jaxspeech convert codec --to hf / --from hf`: transformers' own Xcodec2Model, loaded with `from_pretrained`.

The export must load with no missing, unexpected or mismatched key and compute what our codec computes: the same
codes from the same audio, and the same audio from the same codes within DECODE_ATOL. Xcodec2Model takes its
w2v-BERT input as `input_features`; Xcodec2FeatureExtractor needs torchaudio (not installed), so the test gives it
transformers' SeamlessM4TFeatureExtractor's features, which X-codec2 used and Xcodec2FeatureExtractor
reproduces, of the audio padded as Xcodec2FeatureExtractor pads it.
"""

import dataclasses
import json
import os
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax import nnx
from transformers import SeamlessM4TFeatureExtractor, Xcodec2Config, Xcodec2Model

from jaxspeech.codec import convert, family, hf, sizes
from jaxspeech.codec.model import Codec, CodecConfig
from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import ConversionError
from jaxspeech.workdir import Workdir
from tests.helpers import ROOT, replaced

# Decoded audio, float32 CPU, max abs: measured 5.1e-7 (random codec, peak 0.25), 5.2e-8 (trained, peak 0.02).
DECODE_ATOL = 1e-5
KERNEL_RTOL = 1e-6   # a weight-normalised kernel g·v/‖v‖ after export and re-import (float32 rounding)
HOP = 320            # w2v-BERT's frame: a codec with a w2v-BERT teacher has this hop
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def small_config():
  """A codec Xcodec2Model can represent, small: hop 320 in two blocks, 32 wide, a 2-layer w2v-BERT."""
  return replaced(sizes.tiny_semantic(), **{
      "encoder.channels": 8, "encoder.strides": (16, 20), "encoder.dim": 32, "semantic.features": 32,
      "semantic.dim": 32, "fsq.dim": 64, "decoder.input_channels": 32, "decoder.dim": 32, "decoder.depth": 1,
      "decoder.heads": 2, "decoder.norm_groups": 32})


def random_params(cfg, seed: int = 0) -> dict[str, np.ndarray]:
  """Every param far from its init (norm scales, biases and SnakeBeta's α, β too), without running the init."""
  rng = np.random.default_rng(seed)

  def value(path: str, shape) -> np.ndarray:
    noise = rng.normal(size=shape).astype(np.float32)
    leaf = path.rsplit(".", 1)[-1]
    if leaf in ("scale", "weight_g"):
      return 1 + 0.1 * noise
    if leaf in ("bias", "alpha", "beta"):
      return 0.1 * noise
    return noise / np.sqrt(np.prod(shape[:-1]))
  return {path: value(path, shape).astype(np.float32) for path, shape in hf.param_shapes(cfg).items()}


def codec_with(params: dict, cfg) -> Codec:
  model = nnx.eval_shape(lambda: Codec(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, mapping.unflatten(params))
  nnx.update(model, state)
  return model


def audio(seconds: float = 0.5, batch: int = 2, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(int(16000 * seconds)) / 16000
  wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000, (batch, 1)) * t) + 0.05 * rng.normal(size=(batch, t.size))
  return wav.astype(np.float32)


def xcodec2_inputs(wav_BxS: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
  """(input_values (B, S'), input_features) as Xcodec2FeatureExtractor makes them: one zero appended, zero-padded to
  a multiple of the hop; w2v-BERT's features of that padded by hop / 2 each side."""
  padded_BxS = np.pad(wav_BxS, ((0, 0), (0, 1 + -(wav_BxS.shape[1] + 1) % HOP)))
  extractor = SeamlessM4TFeatureExtractor()
  features = extractor([np.pad(w, HOP // 2) for w in padded_BxS], sampling_rate=16000, return_tensors="pt")
  return padded_BxS, features["input_features"]


def export(params: dict, cfg, dst) -> str:
  """What `--to hf` writes, through the converter's own export."""
  os.makedirs(dst)
  convert.export_checkpoint("hf", types.SimpleNamespace(model=dataclasses.asdict(cfg), params=params), str(dst), None)
  return str(dst)


def load_strictly(path: str) -> Xcodec2Model:
  model, info = Xcodec2Model.from_pretrained(path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
  return model.eval()


def assert_same_codes(model: Codec, theirs: Xcodec2Model, wav_BxS: np.ndarray) -> np.ndarray:
  """Xcodec2Model.encode's codes of the audio are ours, identical; returns them."""
  input_values_BxS, input_features = xcodec2_inputs(wav_BxS)
  codes_BxN = np.asarray(nnx.jit(lambda m, w: m.encode(w))(model, input_values_BxS))
  with torch.no_grad():
    their_codes_Bx1xN = theirs.encode(torch.from_numpy(input_values_BxS)[:, None], input_features).audio_codes
  np.testing.assert_array_equal(their_codes_Bx1xN[:, 0].numpy(), codes_BxN)
  return codes_BxN


def assert_same_audio(model: Codec, theirs: Xcodec2Model, codes_BxN: np.ndarray) -> None:
  """Xcodec2Model.decode's audio of the codes is ours, within DECODE_ATOL."""
  wav_hat_BxS = np.asarray(nnx.jit(lambda m, c: m.decode(c))(model, jnp.asarray(codes_BxN)))
  with torch.no_grad():
    their_wav_Bx1xS = theirs.decode(torch.from_numpy(codes_BxN[:, None].astype(np.int64))).audio_values
  assert np.abs(wav_hat_BxS).max() > 100 * DECODE_ATOL
  np.testing.assert_allclose(their_wav_Bx1xS[:, 0].numpy(), wav_hat_BxS, atol=DECODE_ATOL, rtol=0)


def test_export_loads_into_xcodec2model_and_computes_the_same(tmp_path):
  cfg = small_config()
  params = random_params(cfg)
  path = export(params, cfg, tmp_path / "hf")
  with open(os.path.join(path, "config.json")) as f:
    assert Xcodec2Config(**json.load(f)).head_dim == 16
  model, theirs = codec_with(params, cfg), load_strictly(path)
  codes_BxN = assert_same_codes(model, theirs, audio())
  assert len(np.unique(codes_BxN)) > codes_BxN.size // 2   # codes that vary: a wrong weight would change them
  assert_same_audio(model, theirs, codes_BxN)


def kernel(params: dict, conv: str) -> np.ndarray:
  """A weight-normalised conv's kernel g · v / ‖v‖."""
  v_KxIxO = params[f"{conv}.weight_v"]
  return v_KxIxO * params[f"{conv}.weight_g"] / np.sqrt((v_KxIxO ** 2).sum((0, 1)))


def test_round_trips(tmp_path):
  """Xcodec2Model's own save_pretrained → our params → its state dict again, bit for bit; ours → HF → ours: every
  param identical except the weight-normalised convs, whose (g, v) come back as (‖kernel‖, kernel), the same kernel."""
  torch.manual_seed(0)
  theirs = Xcodec2Model(Xcodec2Config(**hf.hf_config(small_config()))).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.add_(0.1 * torch.randn_like(p))
  theirs.save_pretrained(tmp_path / "theirs")
  imported = convert.import_checkpoint("hf", str(tmp_path / "theirs"), None)
  cfg = small_config()
  assert CodecConfig(**imported.model) == cfg
  assert set(hf.param_shapes(cfg)) - set(imported.params) == {
      k for k in hf.param_shapes(cfg) if k.startswith(hf.NOT_EXPORTED)}
  exported = hf.to_state_dict(imported.params, cfg)
  expected = theirs.state_dict()
  assert exported.keys() == expected.keys()
  for key, tensor in expected.items():
    np.testing.assert_array_equal(exported[key], tensor.numpy(), err_msg=key)

  params = random_params(cfg, seed=1)
  back = hf.from_state_dict(hf.to_state_dict(params, cfg), cfg)
  assert back.keys() == {k for k in params if not k.startswith(hf.NOT_EXPORTED)}
  for key, value in back.items():
    if key.endswith("weight_v"):
      conv = key[:-len(".weight_v")]
      np.testing.assert_allclose(kernel(back, conv), kernel(params, conv), rtol=KERNEL_RTOL, atol=0, err_msg=key)
    elif not key.endswith("weight_g"):
      np.testing.assert_array_equal(value, params[key], err_msg=key)


@pytest.mark.parametrize("name, edit, field", [
    ("tiny", {}, "semantic.enabled"),
    ("small", {"semantic.w2vbert": None}, "semantic.w2vbert"),
    ("small", {"decoder.norm_groups": 16}, "decoder.norm_groups"),
    ("small", {"semantic.dim": 16, "fsq.dim": 48}, "semantic.dim"),
    ("small", {"fsq.dim": 96}, "fsq.dim"),
    ("small", {"encoder.dilations": [1, 3]}, "encoder.dilations"),
    ("small", {"encoder.dim": 64, "fsq.dim": 96}, "encoder.dim"),
    ("small", {"decoder.n_fft": 1024}, "decoder.n_fft"),
])
def test_export_refuses_what_xcodec2model_cannot_represent(tmp_path, name, edit, field):
  cfg = sizes.tiny() if name == "tiny" else small_config()
  cfg = replaced(cfg, **edit)
  with pytest.raises(ConversionError, match=rf"\b{field} "):
    export({}, cfg, tmp_path / "out")
  assert not os.listdir(tmp_path / "out")


def test_sizes_tiny_configs_are_refused_by_both_exports():
  """The tiny codecs' GroupNorm(16): neither xcodec2's modules nor Xcodec2Model (both GroupNorm(32)) have it."""
  for cfg in (sizes.tiny(), sizes.tiny_semantic()):
    with pytest.raises(ConversionError, match=r"decoder\.norm_groups 16"):
      convert.to_state_dict({}, cfg)
  with pytest.raises(ConversionError, match=r"decoder\.norm_groups 16") as refused:
    hf.check(sizes.tiny_semantic())
  assert {p.split(" ")[0] for p in refused.value.problems} == {"decoder.norm_groups", "semantic.dim", "fsq.dim"}
  cfg = replaced(sizes.base(), **{"fsq.levels": (8, 5, 5, 5), "decoder.n_fft": 1024, "decoder.input_channels": 512})
  with pytest.raises(ConversionError) as refused:
    convert.to_state_dict({}, cfg)
  assert {p.split(" ")[0] for p in refused.value.problems} == {"decoder.n_fft", "fsq.levels", "decoder.input_channels"}
  assert hf.problems(sizes.base_w2vbert()) == []


def test_import_refuses_keys_and_config_fields_it_cannot_read(tmp_path):
  cfg = small_config()
  path = export(random_params(cfg), cfg, tmp_path / "hf")
  state_dict = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
  del state_dict["acoustic_decoder.layers.0.self_attn.k_proj.weight"]
  state_dict["acoustic_decoder.extra.weight"] = np.zeros(2, np.float32)
  safetensors.numpy.save_file(state_dict, os.path.join(path, "model.safetensors"))
  with pytest.raises(ConversionError) as refused:
    convert.import_checkpoint("hf", path, None)
  assert "missing key acoustic_decoder.layers.0.self_attn.k_proj.weight" in refused.value.problems
  assert "unexpected key acoustic_decoder.extra.weight" in refused.value.problems
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  with pytest.raises(ConversionError, match="head_dim 8: we run 16"):
    hf.config_from_hf({**config, "head_dim": 8})


def cli(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxspeech.cli", *map(str, args)], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=900)


@pytest.mark.slow   # trains a codec for two steps, then two CLI conversions
def test_cli_exports_a_trained_workdir_and_reads_it_back(corpus_path, tmp_path):
  """`jaxspeech train` a representable tiny_semantic codec, `convert codec --to hf`, Xcodec2Model.from_pretrained:
  the same codes and audio as the workdir's model; `--from hf` gives a workdir whose params export to the same
  file; the tiny workdir (acoustic only, GroupNorm(16)) is refused by both exports, naming the field, with nothing
  written."""
  small = {"model.decoder.depth": 1, "gan.periods": (2, 3), "gan.windows": (512, 256), "train.batch_size": 2,
           "train.steps": 2, "train.log_every": 1, "train.eval_every": 0, "train.checkpoint_every": 2,
           "optim.warmup_steps": 1}
  representable = {"model.semantic.dim": 32, "model.fsq.dim": 96, "model.decoder.norm_groups": 32}
  result = cli("train", "--config=configs/codec.py:tiny_semantic", f"--workdir={tmp_path / 'wd'}",
               f"--config.data.path={corpus_path}",
               *(f"--config.{k}={v!r}" for k, v in {**small, **representable}.items()))
  assert result.returncode == 0, result.stderr[-3000:]
  result = cli("convert", "codec", "--to", "hf", "--src", tmp_path / "wd", "--dst", tmp_path / "hf")
  assert result.returncode == 0, result.stderr
  assert "left out (Xcodec2Model has no such part)" in result.stdout
  model, _ = Workdir(str(tmp_path / "wd")).load_model(family.FAMILY)
  theirs = load_strictly(str(tmp_path / "hf"))
  assert_same_codes(model, theirs, audio(seconds=1.0))   # two steps from init: one code everywhere
  assert_same_audio(model, theirs, np.random.default_rng(0).integers(0, 4 ** 8, (2, 50), dtype=np.int32))

  result = cli("convert", "codec", "--from", "hf", "--src", tmp_path / "hf", "--dst", tmp_path / "back")
  assert result.returncode == 0, result.stderr
  back = Workdir(str(tmp_path / "back")).read_params("codec")
  original = safetensors.numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
  again = hf.to_state_dict(back.params, CodecConfig(**back.model))
  assert again.keys() == original.keys() and all(np.array_equal(again[k], original[k]) for k in original)

  result = cli("train", "--config=configs/codec.py:tiny", f"--workdir={tmp_path / 'tiny'}",
               f"--config.data.path={corpus_path}",
               *(f"--config.{k}={v!r}" for k, v in {**small, "train.steps": 1, "train.checkpoint_every": 1}.items()))
  assert result.returncode == 0, result.stderr[-3000:]
  for target, field in (("hf", "semantic.enabled is False"), ("xcodec2", "decoder.norm_groups 16")):
    dst = tmp_path / f"refused_{target}"
    result = cli("convert", "codec", "--to", target, "--src", tmp_path / "tiny", "--dst", dst)
    assert result.returncode == 2 and field in result.stderr, result.stderr
    assert not os.path.exists(dst)
