"""`jaxspeech convert ast`: HF and original AST/SSAST checkpoints into workdirs and back out to HF.

The HF round trip and a refused import run the real CLI (`python -m jaxspeech.cli convert ...`) on random-init
tiny models; the other conversions call the same entry point in-process (`convert_cli.run`) to stay fast.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from jaxspeech.ast import convert
from jaxspeech.ast.model import AST, ASTConfig
from jaxspeech.convert import mapping
from jaxspeech.train import trainer as trainer_lib
from jaxspeech.workdir import NotAWorkdir, Workdir
from tests.helpers import ROOT, load_config
from tests.helpers.ast import HF_CONFIG, fbank, hf_model, run_inprocess

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
ORIGINAL_ATOL = 1e-4  # our logits from an original-layout checkpoint vs HF's, float32 CPU; measured ~1e-6


def cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxspeech.cli", "convert", "ast", *map(str, args)], cwd=ROOT,
                        env=ENV, capture_output=True, text=True, timeout=240)


def params_of(path) -> dict[str, np.ndarray]:
  return Workdir(str(path)).read_params("ast", weights="params").params


def assert_same(a: dict, b: dict):
  assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # exact: transposes, reshapes and splits change no bit


def ours_from_hf(hf) -> dict[str, np.ndarray]:
  """The in-process converter's params of an HF model (the reference for what the CLI wrote)."""
  cfg = convert.hf_config_to_ast(hf.config)
  return mapping.flatten(convert.from_hf_state_dict(hf.state_dict(), cfg))


@nnx.jit
def logits_of(model: AST, x):
  return model(x)


def ast_logits(cfg: ASTConfig, params: dict, x: np.ndarray) -> np.ndarray:
  model = nnx.eval_shape(lambda: AST(cfg, nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, mapping.unflatten(params))
  nnx.update(model, state)
  return np.asarray(logits_of(model, jnp.asarray(x)))


def hf_logits(hf, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return hf(torch.from_numpy(x)).logits.numpy()


def no_output(dst) -> bool:
  """Nothing at `dst`, and no temporary sibling left behind."""
  return not os.path.exists(dst) and not [n for n in os.listdir(os.path.dirname(dst)) if ".converting-" in n]


# The original YuanGongND layout, built here from an HF model's weights (the inverse of HF's own conversion
# script): timm names under `module.v.`, q/k/v fused as row blocks of `attn.qkv`, DeiT's unused ImageNet heads.

ORIGINAL_NAMES = (  # HF (transformers 5 module names) -> original, applied in order
    (r"^audio_spectrogram_transformer\.embeddings\.cls_token$", "module.v.cls_token"),
    (r"^audio_spectrogram_transformer\.embeddings\.distillation_token$", "module.v.dist_token"),
    (r"^audio_spectrogram_transformer\.embeddings\.position_embeddings$", "module.v.pos_embed"),
    (r"^audio_spectrogram_transformer\.embeddings\.patch_embeddings\.projection\.", "module.v.patch_embed.proj."),
    (r"^audio_spectrogram_transformer\.layers\.(\d+)\.layernorm_before\.", r"module.v.blocks.\1.norm1."),
    (r"^audio_spectrogram_transformer\.layers\.(\d+)\.layernorm_after\.", r"module.v.blocks.\1.norm2."),
    (r"^audio_spectrogram_transformer\.layers\.(\d+)\.attention\.o_proj\.", r"module.v.blocks.\1.attn.proj."),
    (r"^audio_spectrogram_transformer\.layers\.(\d+)\.mlp\.", r"module.v.blocks.\1.mlp."),
    (r"^audio_spectrogram_transformer\.layernorm\.", "module.v.norm."),
    (r"^classifier\.layernorm\.", "module.mlp_head.0."),
    (r"^classifier\.dense\.", "module.mlp_head.1."),
)


def original_state_dict(hf, head: bool = True) -> dict[str, torch.Tensor]:
  sd = {k if k.startswith(("audio_spectrogram_transformer.", "classifier.")) else
        "audio_spectrogram_transformer." + k: v for k, v in hf.state_dict().items()}
  out = {}
  for i in range(hf.config.num_hidden_layers):
    proj = f"audio_spectrogram_transformer.layers.{i}.attention."
    for p in ("weight", "bias"):
      out[f"module.v.blocks.{i}.attn.qkv.{p}"] = torch.cat([sd.pop(f"{proj}{n}_proj.{p}") for n in "qkv"])
  for key, value in sd.items():
    for pattern, replacement in ORIGINAL_NAMES:
      key = re.sub(pattern, replacement, key)
    assert key.startswith("module."), key
    out[key] = value.clone()
  d = hf.config.hidden_size
  out.update({"module.v.head.weight": torch.randn(1000, d), "module.v.head.bias": torch.randn(1000),
              "module.v.head_dist.weight": torch.randn(1000, d), "module.v.head_dist.bias": torch.randn(1000)})
  if not head:
    out = {k: v for k, v in out.items() if not k.startswith("module.mlp_head.")}
  return out


# Transforms.

def test_split_and_fuse_qkv_match_timm_attention():
  rng = np.random.default_rng(0)
  d, h, k = 6, 2, 3
  qkv_weight = rng.normal(size=(3 * h * k, d)).astype(np.float32)
  qkv_bias = rng.normal(size=(3 * h * k,)).astype(np.float32)
  x_D = rng.normal(size=d).astype(np.float32)
  # timm: qkv(x).reshape(3, H, K) -> q, k, v.
  timm_3xHxK = (qkv_weight @ x_D + qkv_bias).reshape(3, h, k)
  kernels = mapping.QKV_IN.from_hf(qkv_weight, ((d, h, k),) * 3)
  biases = mapping.QKV_BIAS.from_hf(qkv_bias, ((h, k),) * 3)
  for j in range(3):
    np.testing.assert_allclose(np.einsum("d,dhk->hk", x_D, kernels[j]) + biases[j], timm_3xHxK[j], atol=1e-5)
  np.testing.assert_array_equal(mapping.QKV_IN.to_hf(kernels), qkv_weight)
  np.testing.assert_array_equal(mapping.QKV_BIAS.to_hf(biases), qkv_bias)
  np.testing.assert_array_equal(mapping.fuse_qkv(*mapping.split_qkv(qkv_weight)), qkv_weight)
  with pytest.raises(ValueError, match="does not split into 3"):
    mapping.split_qkv(np.zeros((4, 2)))


# HF round trips through the CLI.

@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  """(HF classifier, its save_pretrained dir, the workdir `convert --from hf` made of it)."""
  root = tmp_path_factory.mktemp("classifier")
  hf = hf_model(seed=1)
  hf.save_pretrained(root / "hf")
  done = cli("--from", "hf", "--src", root / "hf", "--dst", root / "workdir")
  assert done.returncode == 0, done.stderr[-3000:]
  return hf, root / "hf", root / "workdir"


def test_hf_to_workdir_to_hf_round_trip(classifier, tmp_path, capsys):
  hf, hf_dir, wd = classifier
  saved = set(safetensors.numpy.load_file(hf_dir / "model.safetensors"))
  generation = 4 if any(".encoder.layer." in k for k in saved) else 5  # transformers 5.x saves 4's names
  record = json.loads((wd / "convert.json").read_text())
  assert record["layout"] == f"ASTForAudioClassification (transformers {generation})"
  assert (record["from"], record["generation"], record["initialised"]) == ("hf", generation, [])
  assert record["source"] == str(hf_dir)
  assert sorted(os.listdir(wd / "checkpoints")) == ["0"] and os.path.isdir(wd / "checkpoints" / "0" / "state")
  assert_same(params_of(wd), ours_from_hf(hf))

  done = cli("--to", "hf", "--src", wd, "--dst", tmp_path / "out")
  assert done.returncode == 0, done.stderr[-3000:]
  exported = set(safetensors.numpy.load_file(tmp_path / "out" / "model.safetensors"))
  assert exported == set(convert.tables(convert.hf_config_to_ast(hf.config))[
      f"ASTForAudioClassification (transformers {convert.installed_generation()})"])
  reloaded, info = transformers.ASTForAudioClassification.from_pretrained(tmp_path / "out", output_loading_info=True)
  assert not any(info.values()), info
  assert reloaded.config.id2label == hf.config.id2label
  x = fbank()
  np.testing.assert_array_equal(hf_logits(reloaded.eval(), x), hf_logits(hf, x))

  # ... and back: the other naming generation in, the same params out.
  code, _, err = run_inprocess(capsys, "--from", "hf", "--src", tmp_path / "out", "--dst", tmp_path / "again")
  assert code == 0, err
  assert_same(params_of(tmp_path / "again"), params_of(wd))


def test_astmodel_checkpoint_gets_a_new_head(tmp_path, capsys):
  backbone = hf_model(transformers.ASTModel, seed=2)
  backbone.save_pretrained(tmp_path / "hf")
  code, _, err = run_inprocess(capsys, "--from", "hf", "--src", tmp_path / "hf", "--dst", tmp_path / "wd",
                            "--num-classes", 7)
  assert code == 0, err
  record = json.loads((tmp_path / "wd" / "convert.json").read_text())
  assert record["layout"].startswith("ASTModel")
  assert record["initialised"] == ["head.bias", "head.kernel", "head_norm.bias", "head_norm.scale"]
  assert json.loads((tmp_path / "wd" / "config.json").read_text())["model"]["num_classes"] == 7
  params = params_of(tmp_path / "wd")
  cfg = convert.hf_config_to_ast(backbone.config)
  reference = mapping.flatten(convert.from_hf_state_dict(backbone.state_dict(), cfg))
  assert_same({k: v for k, v in params.items() if not k.startswith("head")}, reference)

  (tmp_path / "labels.txt").write_text("".join(f"speaker {i}\n" for i in range(7)))
  code, _, err = run_inprocess(capsys, "--to", "hf", "--src", tmp_path / "wd", "--dst", tmp_path / "out",
                               "--labels", tmp_path / "labels.txt")
  assert code == 0, err
  reloaded = transformers.ASTForAudioClassification.from_pretrained(tmp_path / "out").eval()
  assert reloaded.config.id2label == {i: f"speaker {i}" for i in range(7)}
  x = torch.from_numpy(fbank(seed=3))
  with torch.no_grad():
    np.testing.assert_array_equal(reloaded.audio_spectrogram_transformer(x).last_hidden_state.numpy(),
                                  backbone(x).last_hidden_state.numpy())
  assert reloaded.config.num_labels == 7


def test_classifier_with_other_num_classes_drops_it_and_says_so(classifier, tmp_path, capsys):
  _, hf_dir, _ = classifier
  code, _, err = run_inprocess(capsys, "--from", "hf", "--src", hf_dir, "--dst", tmp_path / "wd", "--num-classes", 5)
  assert code == 0, err
  assert "3-way classifier is not imported" in err and "classifier.dense.weight" in err
  assert "no classifier" not in err
  record = json.loads((tmp_path / "wd" / "convert.json").read_text())
  assert re.fullmatch(r"ASTForAudioClassification \(transformers \d\) without its classifier", record["layout"])
  assert "classifier.dense.weight" in record["not_imported"] and "head.kernel" in record["initialised"]
  assert params_of(tmp_path / "wd")["head.kernel"].shape == (32, 5)


# Original AST / SSAST checkpoints.

def test_original_ast_checkpoint_matches_hf(classifier, tmp_path, capsys):
  hf, _, hf_workdir = classifier
  torch.save(original_state_dict(hf), tmp_path / "audioset.pth")
  code, _, err = run_inprocess(capsys, "--from", "original", "--src", tmp_path / "audioset.pth", "--dst",
                               tmp_path / "wd", "--input-fdim", 32, "--input-tdim", 64, "--fstride", 16, "--tstride",
                               16, "--heads", 4)
  assert code == 0, err
  assert "module.v.head_dist.weight" in err  # the unused DeiT heads are named, not dropped silently
  record = json.loads((tmp_path / "wd" / "convert.json").read_text())
  assert record["layout"] == "AST (original)" and record["initialised"] == []
  assert sorted(record["unused"]) == ["module.v.head.bias", "module.v.head.weight", "module.v.head_dist.bias",
                                      "module.v.head_dist.weight"]
  saved = json.loads((tmp_path / "wd" / "config.json").read_text())
  assert saved == json.loads((hf_workdir / "config.json").read_text())
  params = params_of(tmp_path / "wd")
  assert_same(params, params_of(hf_workdir))
  cfg = convert.hf_config_to_ast(hf.config)
  x = fbank(seed=4)
  err = float(np.max(np.abs(ast_logits(cfg, params, x) - hf_logits(hf, x))))
  print(f"original layout: max abs err logits vs HF {err:.2e}")
  assert err <= ORIGINAL_ATOL


def ssast_state_dict(seed: int = 5) -> dict[str, torch.Tensor]:
  """An SSAST pretraining checkpoint (16×16 patches at stride 16): encoder, heads, mask_embed, input dims."""
  hf = hf_model(transformers.ASTModel, seed=seed)
  sd = original_state_dict(hf, head=False)
  d = HF_CONFIG["hidden_size"]
  torch.manual_seed(seed)
  for name in ("cpredlayer", "gpredlayer"):
    sd.update({f"module.{name}.0.weight": torch.randn(d, d), f"module.{name}.0.bias": torch.randn(d),
               f"module.{name}.2.weight": torch.randn(256, d), f"module.{name}.2.bias": torch.randn(256)})
  sd["module.mask_embed"] = torch.randn(1, 1, d)
  sd["module.p_input_fdim"] = torch.tensor(HF_CONFIG["num_mel_bins"])
  sd["module.p_input_tdim"] = torch.tensor(HF_CONFIG["max_length"])
  return sd


def test_original_ssast_checkpoint_imports_into_our_ssast(tmp_path, capsys):
  sd = ssast_state_dict()
  torch.save(sd, tmp_path / "ssast.pth")
  code, _, err = run_inprocess(capsys, "--from", "original", "--src", tmp_path / "ssast.pth", "--dst", tmp_path / "wd",
                            "--heads", 4)
  assert code == 0, err
  model = json.loads((tmp_path / "wd" / "config.json").read_text())["model"]
  assert (model["task"], model["num_classes"], model["patch"], model["fstride"], model["tstride"],
          model["num_mel_bins"], model["max_frames"]) == ("ssast", 0, 16, 16, 16, 32, 64)
  record = json.loads((tmp_path / "wd" / "convert.json").read_text())
  assert record["layout"] == "SSAST (original)" and record["initialised"] == []
  assert "module.p_input_tdim" in record["unused"]
  params = params_of(tmp_path / "wd")
  np.testing.assert_array_equal(params["mask_embed"], sd["module.mask_embed"].numpy())
  for ours, theirs in (("cpred", "cpredlayer"), ("gpred", "gpredlayer")):
    np.testing.assert_array_equal(params[f"{ours}.fc1.kernel"], sd[f"module.{theirs}.0.weight"].numpy().T)
    np.testing.assert_array_equal(params[f"{ours}.fc2.kernel"], sd[f"module.{theirs}.2.weight"].numpy().T)
    np.testing.assert_array_equal(params[f"{ours}.fc2.bias"], sd[f"module.{theirs}.2.bias"].numpy())
  qkv = sd["module.v.blocks.1.attn.qkv.weight"].numpy()
  np.testing.assert_array_equal(params["encoder.blocks.1.attn.value.kernel"].reshape(32, 32), qkv[64:].T)
  # The imported workdir initialises fine-tuning as a jaxspeech SSAST run does (`--config.train.init_from`).
  finetune = tiny_config(dict(num_classes=4, hidden=32, layers=2, heads=4, mlp=64, num_mel_bins=32, max_frames=64,
                              fstride=10, tstride=10, pool="mean"))
  finetune.train.init_from = str(tmp_path / "wd")
  init = mapping.flatten(nnx.to_pure_dict(_restore_or_init(finetune, tmp_path / "finetune").params))
  np.testing.assert_array_equal(init["blocks.0.fc1.kernel"], params["encoder.blocks.0.fc1.kernel"])
  # Exported, the encoder becomes an HF ASTModel; the SSAST heads are named as left out.
  code, out, err = run_inprocess(capsys, "--to", "hf", "--src", tmp_path / "wd", "--dst", tmp_path / "out")
  assert code == 0, err
  assert "left out (HF has no SSAST heads): cpred, gpred, mask_embed" in out
  backbone = transformers.ASTModel.from_pretrained(tmp_path / "out")
  np.testing.assert_array_equal(backbone.embeddings.position_embeddings.detach().numpy(),
                                sd["module.v.pos_embed"].numpy())


# Errors: one line per problem, exit 2, nothing written.

def test_wrong_family_is_refused_without_traceback(tmp_path):
  (tmp_path / "llama").mkdir()
  (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama",
                                                              "architectures": ["LlamaForCausalLM"]}))
  safetensors.numpy.save_file({"model.embed_tokens.weight": np.zeros((4, 2), np.float32)},
                              str(tmp_path / "llama" / "model.safetensors"))
  done = cli("--from", "hf", "--src", tmp_path / "llama", "--dst", tmp_path / "wd")
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert done.stderr.startswith("jaxspeech convert: error: ")
  assert "'llama'" in done.stderr and "LlamaForCausalLM" in done.stderr
  assert no_output(tmp_path / "wd")


def test_flags_of_another_conversion_are_refused(classifier, tmp_path, capsys):
  code, _, err = run_inprocess(capsys, "--from", "hf", "--src", classifier[1], "--dst", tmp_path / "wd",
                               "--input-tdim", 128, "--labels", "labels.txt")
  assert code == 2
  assert err.splitlines()[1:] == ["  --input-tdim does not apply here", "  --labels does not apply here"], err
  assert no_output(tmp_path / "wd")


def test_export_of_another_family_is_refused(tmp_path, capsys):
  (tmp_path / "llasa").mkdir()
  (tmp_path / "llasa" / "config.json").write_text(json.dumps({"family": "llasa", "model": {}}))
  code, _, err = run_inprocess(capsys, "--to", "hf", "--src", tmp_path / "llasa", "--dst", tmp_path / "out")
  assert code == 2 and "holds a 'llasa' run, not 'ast'" in err
  assert no_output(tmp_path / "out")


def edited_hf_dir(classifier, path, edit):
  """A copy of the classifier's HF dir with its state dict passed through `edit`."""
  shutil.copytree(classifier[1], path)
  sd = safetensors.numpy.load_file(path / "model.safetensors")
  safetensors.numpy.save_file(edit(sd), str(path / "model.safetensors"), metadata={"format": "pt"})
  return path


def test_missing_unexpected_and_misshaped_keys_are_listed(classifier, tmp_path, capsys):
  def drop(sd):
    return {k: v for k, v in sd.items() if not k.endswith("layer.1.attention.attention.key.bias")
            and not k.endswith("layers.1.attention.k_proj.bias")}

  def extra(sd):
    return {**sd, "audio_spectrogram_transformer.rotary.weight": np.zeros(3, np.float32),
            "classifier.extra.bias": np.zeros(3, np.float32)}

  def misshape(sd):
    return {k: (v[:, :5] if k.endswith("position_embeddings") else v[..., :16] if k.endswith("cls_token") else v)
            for k, v in sd.items()}

  for name, edit, expected in (
      ("missing", drop, [r"missing key audio_spectrogram_transformer\.(encoder\.layer|layers)\.1\.attention\."]),
      ("unexpected", extra, ["unexpected key audio_spectrogram_transformer.rotary.weight",
                             "unexpected key classifier.extra.bias"]),
      ("misshaped", misshape, [r"shape mismatch audio_spectrogram_transformer\.embeddings\.cls_token: "
                               r"\(1, 1, 16\), expected \(1, 1, 32\)",
                               r"shape mismatch audio_spectrogram_transformer\.embeddings\.position_embeddings: "
                               r"\(1, 5, 32\), expected \(1, 10, 32\)"])):
    src = edited_hf_dir(classifier, tmp_path / name, edit)
    code, _, err = run_inprocess(capsys, "--from", "hf", "--src", src, "--dst", tmp_path / f"wd_{name}")
    assert code == 2, (name, err)
    lines = err.splitlines()
    assert lines[0].startswith("jaxspeech convert: error: HF AST checkpoint"), err
    for pattern in expected:
      assert any(re.search(pattern, line) for line in lines[1:]), (pattern, err)
    assert len(lines) == 1 + len(expected), err  # one line per problem
    assert no_output(tmp_path / f"wd_{name}")


def test_original_with_wrong_grid_names_the_flags(classifier, tmp_path, capsys):
  torch.save(original_state_dict(classifier[0]), tmp_path / "audioset.pth")
  code, _, err = run_inprocess(capsys, "--from", "original", "--src", tmp_path / "audioset.pth", "--dst",
                            tmp_path / "wd", "--input-fdim", 32, "--input-tdim", 64)  # strides default to 10
  assert code == 2
  assert "shape mismatch module.v.pos_embed: (1, 10, 32), expected (1, 12, 32)" in err, err
  assert "--input-fdim 32 --input-tdim 64 --fstride 10 --tstride 10" in err
  assert no_output(tmp_path / "wd")


# The trainer takes a converted workdir as its own.

def tiny_config(model: dict):
  cfg = load_config("ast", "tiny")
  cfg.model.update(**model)
  return cfg


def test_trainer_accepts_a_matching_config_and_refuses_another(classifier):
  wd = str(classifier[2])
  model = json.loads((classifier[2] / "config.json").read_text())["model"]
  assert set(model) == set(load_config("ast", "tiny").model.keys())
  Workdir(wd).claim(tiny_config(model), write=False)
  with pytest.raises(NotAWorkdir, match="different model"):
    Workdir(wd).claim(tiny_config({**model, "hidden": 64}), write=False)


def _restore_or_init(cfg, workdir):
  import grain
  from jaxspeech.workdir import checkpoints as checkpoint
  trainer = trainer_lib.Trainer(cfg, str(workdir))
  checkpoints = checkpoint.Checkpoints(str(workdir), keep=3, async_save=False)
  try:
    return trainer.restore_or_init(iter(grain.MapDataset.range(4).to_iter_dataset()), checkpoints)
  finally:
    checkpoints.close()


def test_trainer_restores_the_converted_params(classifier):
  model = json.loads((classifier[2] / "config.json").read_text())["model"]
  state = _restore_or_init(tiny_config(model), classifier[2])
  assert int(state.step) == 0
  assert_same(mapping.flatten(nnx.to_pure_dict(state.params)), params_of(classifier[2]))


def test_converted_workdir_with_another_train_state_is_an_error_not_a_fresh_start(classifier):
  model = json.loads((classifier[2] / "config.json").read_text())["model"]
  cfg = tiny_config(model)
  cfg.train.ema_decay = 0.999
  with pytest.raises(ValueError, match="init_from"):
    _restore_or_init(cfg, classifier[2])


def test_init_from_a_converted_workdir_with_ema_groups_and_a_new_head(classifier, tmp_path):
  """`train.init_from` loads the imported params into a fresh run with its own EMA and optimizer groups;
  `train.init_skip` leaves a head of another size at its initialisation."""
  model = json.loads((classifier[2] / "config.json").read_text())["model"]
  cfg = tiny_config({**model, "num_classes": model["num_classes"] + 3})
  cfg.train.update(ema_decay=0.999, init_from=str(classifier[2]), init_skip=r"^head\.")
  state = _restore_or_init(cfg, tmp_path / "run")
  imported = params_of(classifier[2])
  ours = mapping.flatten(nnx.to_pure_dict(state.params))
  assert_same({k: v for k, v in ours.items() if not k.startswith("head.")},
              {k: v for k, v in imported.items() if not k.startswith("head.")})
  assert ours["head.kernel"].shape[-1] == model["num_classes"] + 3
  assert_same(mapping.flatten(nnx.to_pure_dict(state.ema)), ours)
  cfg.train.init_skip = ""
  with pytest.raises(ValueError, match="shape mismatch head.kernel"):
    _restore_or_init(cfg, tmp_path / "run2")
