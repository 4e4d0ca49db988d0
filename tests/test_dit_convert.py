"""`jaxspeech convert dit` both ways: F5 .pt / .safetensors → workdir → .safetensors that f5-tts' own
`load_checkpoint` loads into its CFM, bit for bit; and the errors (listed keys and shapes, nothing written)."""

import os

import numpy as np
import pytest
import safetensors.torch
import torch

from jaxspeech.convert import cli as convert_cli
from jaxspeech.dit import convert
from jaxspeech.dit.model import DiTConfig
from jaxspeech.workdir import Workdir
from tests.helpers import dit as ref
from tests import reference_stubs

CFG = DiTConfig(dim=48, depth=2, heads=3, dim_head=16, ff_mult=2, mel_dim=100, text_num_embeds=40, text_dim=32,
                conv_layers=1)
# configs/dit.py:tiny with CFG's sizes, as a user describes a checkpoint the config does not match
OVERRIDES = ["--config=configs/dit.py:tiny", "--config.model.dim=48", "--config.model.depth=2",
             "--config.model.heads=3", "--config.model.dim_head=16", "--config.model.text_dim=32",
             "--config.model.conv_layers=1"]


def f5_loader():
  reference_stubs.stub_modules("pydub", "vocos", "matplotlib")
  from f5_tts.infer import utils_infer  # pylint: disable=import-outside-toplevel
  return utils_infer.load_checkpoint


def cfm(seed: int):
  return ref.CFM(transformer=ref.f5_backbone(CFG, seed), num_channels=CFG.mel_dim)


def save_pt(model, path):
  ema = {f"ema_model.{k}": v for k, v in model.state_dict().items()}
  torch.save({"model_state_dict": model.state_dict(), "ema_model_state_dict": {**ema, "initted": torch.tensor(True),
                                                                                "step": torch.tensor(123)},
              "update": 456}, path)


def run(capsys, *args) -> tuple[int, str]:
  code = convert_cli.run("dit", list(args))
  out = capsys.readouterr()
  return code, out.out + out.err


def test_pt_to_workdir_to_safetensors_loads_in_f5(tmp_path, capsys):
  source = cfm(0)
  save_pt(source, tmp_path / "model.pt")
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("".join(c + "\n" for c in " abcdefghijklmnopqrstuvwxyz.,?!'ABCDEFGH"))
  code, out = run(capsys, "--from", "f5", "--src", str(tmp_path / "model.pt"), "--dst", str(tmp_path / "wd"),
                  *OVERRIDES, "--vocab", str(vocab))
  assert code == 0, out
  assert "text_num_embeds=40" in out  # read from the checkpoint, not tiny's 256
  params = Workdir(str(tmp_path / "wd")).read_params("dit").params
  want = convert.from_f5_state_dict({k.removeprefix("transformer."): v for k, v in source.state_dict().items()}, CFG)
  assert params.keys() == want.keys() and all(np.array_equal(params[k], want[k]) for k in want)

  out_file = tmp_path / "out.safetensors"
  code, out = run(capsys, "--to", "f5", "--src", str(tmp_path / "wd"), "--dst", str(out_file))
  assert code == 0, out
  assert os.path.isfile(out_file) and not [p for p in os.listdir(tmp_path) if "converting" in p]
  loaded = f5_loader()(cfm(1), str(out_file), "cpu", dtype=torch.float32)
  for key, value in source.state_dict().items():
    torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_safetensors_ema_checkpoint_imports(tmp_path, capsys):
  source = cfm(2)
  ema = {f"ema_model.{k}": v.contiguous() for k, v in source.state_dict().items()}
  safetensors.torch.save_file({**ema, "initted": torch.tensor(True), "step": torch.tensor(7)},
                              tmp_path / "model.safetensors")
  code, out = run(capsys, "--from", "f5", "--src", str(tmp_path / "model.safetensors"), "--dst",
                  str(tmp_path / "wd"), *OVERRIDES)
  assert code == 0, out
  assert "no --vocab" in out
  got = Workdir(str(tmp_path / "wd")).read_params("dit").params["blocks.1.attn.query.kernel"]
  want = source.state_dict()["transformer.transformer_blocks.1.attn.to_q.weight"].numpy()
  np.testing.assert_array_equal(got.reshape(48, 48).T, want)


def test_wrong_config_lists_every_mismatch_and_writes_nothing(tmp_path, capsys):
  save_pt(cfm(0), tmp_path / "model.pt")
  code, out = run(capsys, "--from", "f5", "--src", str(tmp_path / "model.pt"), "--dst", str(tmp_path / "wd"),
                  *OVERRIDES, "--config.model.dim_head=8", "--config.model.depth=1")
  assert code == 2
  assert "unexpected key transformer_blocks.1.attn.to_q.weight" in out
  assert "shape mismatch transformer_blocks.0.attn.to_q.weight" in out
  assert "rotary_embed.inv_freq (8,) is not RoPE's for dim_head=8" in out
  assert not os.path.exists(tmp_path / "wd")


def test_missing_keys_are_listed(tmp_path, capsys):
  sd = cfm(0).state_dict()
  del sd["transformer.norm_out.linear.bias"], sd["transformer.rotary_embed.inv_freq"]
  torch.save({"model_state_dict": sd}, tmp_path / "model.pt")
  code, out = run(capsys, "--from", "f5", "--src", str(tmp_path / "model.pt"), "--dst", str(tmp_path / "wd"),
                  *OVERRIDES)
  assert code == 2
  assert "missing key norm_out.linear.bias" in out and "missing key rotary_embed.inv_freq" in out
  assert not os.path.exists(tmp_path / "wd")


@pytest.mark.parametrize("backbone", ["dit", "unett"])
def test_table_round_trips(backbone):
  cfg = CFG if backbone == "dit" else DiTConfig(**{**CFG.__dict__, "backbone": "unett", "depth": 4})
  sd = {k: v.numpy() for k, v in ref.f5_backbone(cfg).state_dict().items()}
  back = convert.to_f5_state_dict(convert.from_f5_state_dict(sd, cfg), cfg)
  assert back.keys() == sd.keys()
  for key in sd:
    np.testing.assert_array_equal(back[key], sd[key])
