"""`jaxspeech convert codec`: xcodec2 state dicts into codec workdirs and back out.

The reference modules are tests/helpers/codec.py's (the xcodec2 package's, random-init, small). The round trip runs
the real CLI (`python -m jaxspeech.cli convert codec ...`); refused imports call the same entry point in-process.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from jaxspeech.codec import convert, sizes
from jaxspeech.codec.model import CodecConfig
from jaxspeech.convert import cli as convert_cli
from jaxspeech.workdir import Workdir
from tests.helpers.codec import CONFIGS, Reference, codec_config, inputs, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
BUFFER_ATOL = 2e-7   # our anti-alias filters and Hann window vs torch's (float32 rounding); measured 1.3e-7


def save(state_dict, path) -> str:
  safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
  return str(path)


def run(capsys, *args) -> tuple[int, str, str]:
  capsys.readouterr()
  code = convert_cli.run("codec", list(map(str, args)))
  out = capsys.readouterr()
  return code, out.out, out.err


def flags(name: str) -> list[str]:
  """What the weights' shapes do not say about a CONFIGS entry."""
  c = CONFIGS[name]
  return ["--heads", c["heads"], "--dilations", ",".join(map(str, c["dilations"]))]


def assert_same_state_dict(got: dict, original: dict, buffers) -> None:
  """Params identical; buffers (recomputed by us, not carried) within BUFFER_ATOL."""
  assert got.keys() == original.keys()
  for key, tensor in original.items():
    if key in buffers:
      np.testing.assert_allclose(got[key], tensor.numpy(), atol=BUFFER_ATOL, rtol=0, err_msg=key)
    else:
      np.testing.assert_array_equal(got[key], tensor.numpy(), err_msg=key)


def assert_loads_strictly_and_runs_the_same(exported: dict, ref: Reference, name: str) -> None:
  """`exported` loads into fresh xcodec2 modules with load_state_dict(strict=True) and gives `ref`'s numbers."""
  loaded = Reference(CONFIGS[name]).eval()
  loaded.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  wav, features = map(torch.from_numpy, inputs(name))
  expected, got = ref.run(wav, features), loaded.run(wav, features)
  np.testing.assert_array_equal(got["codes"], expected["codes"])
  np.testing.assert_allclose(got["wav"], expected["wav"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_round_trip(name):
  ref, cfg = reference(name), codec_config(CONFIGS[name])
  _, params = convert.from_state_dict(ref.state_dict(), cfg)
  exported = convert.to_state_dict(params, cfg)
  assert_same_state_dict(exported, ref.state_dict(), convert.layout(cfg).constants)
  assert_loads_strictly_and_runs_the_same(exported, ref, name)


def cli(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxspeech.cli", "convert", "codec", *map(str, args)], cwd=ROOT,
                        env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow   # two CLI runs, each compiling the codec's train state
def test_cli_round_trip_is_identical_and_loads_strictly(tmp_path):
  """xcodec2 safetensors → workdir → xcodec2 safetensors with the real CLI; the export loads into the
  xcodec2 modules with load_state_dict(strict=True) and decodes the same audio."""
  name = "semantic"
  ref, cfg = reference(name), codec_config(CONFIGS[name])
  original = ref.state_dict()
  result = cli("--from", "xcodec2", "--src", save(original, tmp_path / "in.safetensors"), "--dst", tmp_path / "wd",
               *flags(name))
  assert result.returncode == 0, result.stderr
  with open(tmp_path / "wd" / "config.json") as f:
    saved = json.load(f)
  assert saved["family"] == "codec" and CodecConfig(**saved["model"]) == cfg
  assert Workdir(str(tmp_path / "wd")).read_params("codec", weights="params").step == 0
  result = cli("--to", "xcodec2", "--src", tmp_path / "wd", "--dst", tmp_path / "out")
  assert result.returncode == 0, result.stderr
  exported = safetensors.numpy.load_file(str(tmp_path / "out" / "model.safetensors"))
  assert_same_state_dict(exported, original, convert.layout(cfg).constants)
  assert_loads_strictly_and_runs_the_same(exported, ref, name)


def test_legacy_weight_norm_and_released_layout(tmp_path):
  """weight_g/weight_v keys read as the parametrizations ones; XCodec2Model's keys (no fc_post_s,
  SemanticDecoder_module; w2v-BERT's semantic_model.*) import with those left at their initialisation."""
  ref = reference("semantic")
  cfg = codec_config(CONFIGS["semantic"])
  _, expected = convert.from_state_dict(ref.state_dict(), cfg)
  g, v = convert.WEIGHT_NORM["parametrizations"]
  legacy = {k.replace(g, "weight_g").replace(v, "weight_v"): t for k, t in ref.state_dict().items()}
  name, params = convert.from_state_dict(legacy, cfg)
  assert name.startswith("xcodec2 (legacy")
  assert params.keys() == expected.keys() and all(np.array_equal(params[k], expected[k]) for k in params)

  released = {k: t for k, t in ref.state_dict().items()
              if not k.startswith(("fc_post_s.", "SemanticDecoder_module."))}
  released["semantic_model.encoder.layers.0.weight"] = torch.zeros(3)
  name, params = convert.from_state_dict(released, cfg)
  assert name.startswith("XCodec2Model")
  assert sorted(expected.keys() - params.keys()) == sorted(k for k in expected
                                                           if k.startswith(("fc_post_s.", "semantic_decoder.")))


def test_bad_checkpoints_are_refused_with_every_key_named(tmp_path, capsys):
  state_dict = reference("acoustic").state_dict()
  bad = dict(state_dict)
  del bad["generator.backbone.final_layer_norm.bias"]
  bad["generator.backbone.extra.weight"] = torch.zeros(2)
  bad["fc_post_a.bias"] = torch.zeros(5)
  bad["CodecEnc.conv_blocks.1.block.0.block.0.upsample.filter"] = torch.ones(1, 1, 12)
  src = save(bad, tmp_path / "bad.safetensors")
  code, _, err = run(capsys, "--from", "xcodec2", "--src", src, "--dst", tmp_path / "wd", *flags("acoustic"))
  assert code == 2
  assert "missing key generator.backbone.final_layer_norm.bias" in err
  assert "unexpected key generator.backbone.extra.weight" in err
  assert not os.path.exists(tmp_path / "wd")

  del bad["generator.backbone.extra.weight"]
  bad["generator.backbone.final_layer_norm.bias"] = state_dict["generator.backbone.final_layer_norm.bias"]
  code, _, err = run(capsys, "--from", "xcodec2", "--src", save(bad, tmp_path / "bad2.safetensors"),
                     "--dst", tmp_path / "wd", *flags("acoustic"))
  assert code == 2 and "upsample.filter" in err
  bad["CodecEnc.conv_blocks.1.block.0.block.0.upsample.filter"] = state_dict[
      "CodecEnc.conv_blocks.1.block.0.block.0.upsample.filter"]
  code, _, err = run(capsys, "--from", "xcodec2", "--src", save(bad, tmp_path / "bad3.safetensors"),
                     "--dst", tmp_path / "wd", *flags("acoustic"))
  assert code == 2 and "shape mismatch fc_post_a.bias: (5,), expected (32,)" in err
  code, _, err = run(capsys, "--from", "xcodec2", "--src", src, "--dst", tmp_path / "wd", "--heads", "3")
  assert code == 2 and "--dilations gives 3" in err and "--heads 3 does not divide" in err
  assert not os.path.exists(tmp_path / "wd")


def test_base_is_the_released_shape():
  """The modules XCodec2Model builds, at their defaults: `sizes.base()` is what the import infers from them with
  the flags' defaults, and every key and shape maps (as the released XCodec2Model layout)."""
  from xcodec2.vq.codec_decoder_vocos import CodecDecoderVocos  # pylint: disable=import-outside-toplevel
  from xcodec2.vq.codec_encoder import CodecEncoder_Transformer  # pylint: disable=import-outside-toplevel
  from xcodec2.vq.module import SemanticEncoder  # pylint: disable=import-outside-toplevel
  modules = {"CodecEnc": CodecEncoder_Transformer(), "generator": CodecDecoderVocos(),
             "SemanticEncoder_module": SemanticEncoder(1024, 1024, 1024),
             "fc_prior": torch.nn.Linear(2048, 2048), "fc_post_a": torch.nn.Linear(2048, 1024)}
  state_dict = {f"{name}.{k}": v for name, module in modules.items() for k, v in module.state_dict().items()}
  args = convert_cli.family_parser("codec", convert).parse_args(["--from", "xcodec2", "--src", "-", "--dst", "-"])
  cfg = convert.config_from_state_dict(state_dict, args)
  assert cfg == sizes.base()
  name, params = convert.from_state_dict(state_dict, cfg)
  assert name == "XCodec2Model (parametrizations weight norm)"
  assert sum(p.size for p in params.values()) == sum(v.numel() for k, v in state_dict.items()
                                                      if k not in convert.layout(cfg).constants)


def test_vocoder_has_no_converter_of_its_own():
  """The vocoder family lives in the codec folder; the codec's converter must not answer for it."""
  from jaxspeech.convert import cli as convert_cli
  with pytest.raises(KeyError, match="family 'vocoder' has no converter"):
    convert_cli.converter("vocoder")
  assert convert_cli.converter("codec").__name__ == "jaxspeech.codec.convert"
