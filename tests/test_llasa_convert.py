"""`jaxspeech convert llasa`: HF Llama directories (both config generations, single or sharded safetensors,
tied or untied) into workdirs and back, bit for bit; errors list every bad key and write nothing.

One test runs the CLI as a user does (a subprocess); the others call its entry point in-process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from jaxspeech.convert import cli as convert_cli, mapping
from jaxspeech.llasa import convert
from jaxspeech.workdir import Workdir
from tests.helpers.llama import HF_CONFIGS, hf_llama, save_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}


def run_inprocess(capsys, *args) -> tuple[int, str, str]:
  capsys.readouterr()
  code = convert_cli.run("llasa", list(map(str, args)))
  out = capsys.readouterr()
  return code, out.out, out.err


def to_old_config(path) -> None:
  """Rewrites config.json in the transformers 4 layout: top-level rope_theta, rope_scaling with "type"."""
  with open(os.path.join(path, "config.json")) as f:
    raw = json.load(f)
  rope = raw.pop("rope_parameters")
  raw["rope_theta"] = rope.pop("rope_theta")
  raw["rope_scaling"] = None if rope["rope_type"] == "default" else {**rope, "type": rope.pop("rope_type")}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(raw, f)


def hf_tensors(path) -> dict[str, np.ndarray]:
  state_dict, _ = mapping.read_hf_weights(str(path))
  return state_dict


def no_output(path) -> bool:
  return not os.path.exists(path) and not [p for p in os.listdir(os.path.dirname(path)) if ".converting" in p]


def test_vocab_padding_transforms_invert():
  rows = convert.vocab_rows(5)
  table_VxD = np.arange(10.0).reshape(5, 2)
  padded = rows.from_hf(table_VxD, (8, 2))
  assert padded.shape == (8, 2) and not padded[5:].any()
  np.testing.assert_array_equal(rows.to_hf(padded), table_VxD)
  columns = convert.vocab_columns(5)
  kernel_DxP = columns.from_hf(table_VxD, (2, 8))
  np.testing.assert_array_equal(kernel_DxP[:, :5], table_VxD.T)
  np.testing.assert_array_equal(columns.to_hf(kernel_DxP), table_VxD)


def test_stack_and_unstack_layers_invert():
  params = {"embed.embedding": np.zeros((4, 2)), **{f"blocks.{i}.attn.q.kernel": np.full((2, 3), i) for i in range(3)}}
  stacked = convert.stack_layers(params, 3)
  assert stacked["blocks.attn.q.kernel"].shape == (3, 2, 3)
  restored = convert.unstack_layers(stacked)
  assert restored.keys() == params.keys()
  for k in params:
    np.testing.assert_array_equal(restored[k], params[k])


@pytest.mark.parametrize("name, old_config, shard, scan", [
    ("gqa2-llama3-rope-tied-vocab1003", False, False, False),
    ("gqa4-headdim32-llama3-untied", True, True, True),
    ("mha-plain-rope-untied", True, False, False),
])
def test_hf_to_workdir_to_hf_round_trip(name, old_config, shard, scan, tmp_path, capsys):
  hf = hf_llama(name)
  src = tmp_path / "hf"
  hf.save_pretrained(src, max_shard_size="100KB" if shard else "10GB")
  save_tokenizer(src, HF_CONFIGS[name]["vocab_size"])
  if old_config:
    to_old_config(src)
  assert os.path.exists(src / mapping.WEIGHT_INDEX) == shard
  flags = ["--scan-layers"] if scan else []
  code, out, err = run_inprocess(capsys, "--from", "hf", "--src", src, "--dst", tmp_path / "wd", *flags)
  assert code == 0, err
  saved = json.load(open(tmp_path / "wd" / "config.json"))
  assert saved["model"]["scan_layers"] == scan and saved["model"]["tie_embeddings"] == hf.config.tie_word_embeddings
  assert json.load(open(tmp_path / "wd" / "convert.json"))["initialised"] == []

  code, out, err = run_inprocess(capsys, "--to", "hf", "--src", tmp_path / "wd", "--dst", tmp_path / "out",
                                 "--max-shard-gb", "0.0001")
  assert code == 0, err
  assert "tokenizer.json" in out
  original, exported = hf_tensors(src), hf_tensors(tmp_path / "out")
  assert exported.keys() == original.keys()
  for key in original:
    np.testing.assert_array_equal(exported[key], original[key], err_msg=key)  # exact: no arithmetic on the way

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  ids = torch.tensor(np.random.default_rng(0).integers(0, hf.config.vocab_size, (1, 30)))
  with torch.no_grad():
    np.testing.assert_array_equal(reloaded(ids).logits.numpy(), hf(ids).logits.numpy())
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  assert tokenizer("w3 w7")["input_ids"] == [3, 7]


def test_tied_checkpoint_with_a_copied_lm_head_imports_and_says_so(tmp_path, capsys):
  hf = hf_llama("gqa2-llama3-rope-tied-vocab1003")
  hf.save_pretrained(tmp_path / "hf")
  tensors = hf_tensors(tmp_path / "hf")
  safetensors.numpy.save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]},
                              tmp_path / "hf" / "model.safetensors")
  code, _, err = run_inprocess(capsys, "--from", "hf", "--src", tmp_path / "hf", "--dst", tmp_path / "wd")
  assert code == 0, err
  assert "lm_head.weight (a copy of the embedding) is not imported" in err


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path, capsys):
  hf = hf_llama("mha-plain-rope-untied")
  hf.save_pretrained(tmp_path / "hf")
  tensors = hf_tensors(tmp_path / "hf")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
  tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:32]
  safetensors.numpy.save_file(tensors, tmp_path / "hf" / "model.safetensors")
  code, _, err = run_inprocess(capsys, "--from", "hf", "--src", tmp_path / "hf", "--dst", tmp_path / "wd")
  assert code == 2
  assert "missing key model.layers.1.mlp.up_proj.weight" in err
  assert "unexpected key model.layers.0.self_attn.q_proj.bias" in err
  assert no_output(tmp_path / "wd")
  del tensors["model.layers.0.self_attn.q_proj.bias"]
  tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((96, 64), np.float32)
  safetensors.numpy.save_file(tensors, tmp_path / "hf" / "model.safetensors")
  code, _, err = run_inprocess(capsys, "--from", "hf", "--src", tmp_path / "hf", "--dst", tmp_path / "wd")
  assert code == 2
  assert "shape mismatch model.layers.0.self_attn.k_proj.weight: (32, 64), expected (64, 64)" in err
  assert no_output(tmp_path / "wd")


def test_unsupported_configs_are_refused(tmp_path, capsys):
  hf = hf_llama("mha-plain-rope-untied")
  hf.save_pretrained(tmp_path / "hf")
  raw = json.load(open(tmp_path / "hf" / "config.json"))
  json.dump({**raw, "attention_bias": True, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}},
            open(tmp_path / "hf" / "config.json", "w"))
  code, _, err = run_inprocess(capsys, "--from", "hf", "--src", tmp_path / "hf", "--dst", tmp_path / "wd")
  assert code == 2 and "attention_bias=True" in err
  json.dump({**raw, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, open(tmp_path / "hf" / "config.json", "w"))
  code, _, err = run_inprocess(capsys, "--from", "hf", "--src", tmp_path / "hf", "--dst", tmp_path / "wd")
  assert code == 2 and "rope type 'yarn' is not supported" in err
  assert no_output(tmp_path / "wd")


def test_cli_as_a_user_runs_it(tmp_path):
  hf_llama("gqa2-llama3-rope-tied-vocab1003").save_pretrained(tmp_path / "hf")
  result = subprocess.run([sys.executable, "-m", "jaxspeech.cli", "convert", "llasa", "--from", "hf", "--src",
                           str(tmp_path / "hf"), "--dst", str(tmp_path / "wd")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-2000:]
  assert Workdir(str(tmp_path / "wd")).read_params("llasa").params.keys() == set(
      convert.param_shapes(convert.hf_config_to_llama(json.load(open(tmp_path / "hf" / "config.json")))))
