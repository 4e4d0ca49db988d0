"""AST converter: unit tests of the transforms, and logits/hidden-state parity with random-init HF
`ASTForAudioClassification` / `ASTModel` (float32 on CPU) through both HF naming generations."""

import dataclasses
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx

from jaxspeech.ast import convert
from jaxspeech.ast.model import AST, ASTConfig
from jaxspeech.convert import mapping
from tests.helpers.ast import perturbed

ATOL = 1e-5  # float32 logits and hidden states, ours vs PyTorch on CPU; measured max abs error <= 2.3e-6

HF_CONFIGS = {
    "h64-l2-a4-stride10-overlap": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=128, frequency_stride=10, time_stride=10,
                                       max_length=100, num_mel_bins=128, num_labels=5),
    "h96-l3-a6-stride16": dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=6, intermediate_size=192,
                               frequency_stride=16, time_stride=16, max_length=128, num_mel_bins=64,
                               num_labels=12),
    "h64-l2-a2-f10-t16": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                              frequency_stride=10, time_stride=16, max_length=128, num_mel_bins=64, num_labels=12),
}


def hf_classifier(name: str, seed: int = 0) -> transformers.ASTForAudioClassification:
  torch.manual_seed(seed)
  return perturbed(transformers.ASTForAudioClassification(transformers.ASTConfig(**HF_CONFIGS[name])), seed)


def ast_with(cfg: ASTConfig, params: dict) -> AST:
  """An AST holding `params`, built without running the random init (slow to compile on CPU).

  Params that `params` lacks stay abstract, so a forward pass fails unless every param was set.
  """
  model = nnx.eval_shape(lambda: AST(cfg, nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model


def random_params(cfg: ASTConfig, seed: int) -> dict:
  """Random values for every param of `AST(cfg)`: layer-norm scales 1 + noise, the rest noise."""
  rng = np.random.default_rng(seed)
  shapes = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: AST(cfg, nnx.Rngs(0))), nnx.Param))
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (path[-1].key == "scale") + 0.1 * rng.standard_normal(s.shape, dtype=np.float32), shapes)


@nnx.jit
def forward(model: AST, fbank_BxTxF: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(features, logits)."""
  return model.features(fbank_BxTxF), model(fbank_BxTxF)


def fbank(cfg: ASTConfig, batch: int = 2, frames: int | None = None, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, frames or cfg.max_frames, cfg.num_mel_bins)).astype(np.float32)


def hf_logits(hf: torch.nn.Module, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return hf(torch.from_numpy(x)).logits.numpy()


def max_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# Transforms: each is the layout change torch's op implies, and from_hf inverts to_hf exactly.

def test_linear_transforms_match_torch_linear():
  rng = np.random.default_rng(0)
  x_D = rng.normal(size=6).astype(np.float32)
  kernel_DxO = rng.normal(size=(6, 5)).astype(np.float32)
  kernel_DxHxK = rng.normal(size=(6, 2, 3)).astype(np.float32)
  kernel_HxKxD = rng.normal(size=(2, 3, 6)).astype(np.float32)
  a_HxK = rng.normal(size=(2, 3)).astype(np.float32)
  np.testing.assert_allclose(mapping.linear_to_hf(kernel_DxO) @ x_D, x_D @ kernel_DxO, atol=1e-5)
  np.testing.assert_allclose(mapping.heads_in_to_hf(kernel_DxHxK) @ x_D,
                             np.einsum("d,dhk->hk", x_D, kernel_DxHxK).reshape(-1), atol=1e-5)
  np.testing.assert_allclose(mapping.heads_out_to_hf(kernel_HxKxD) @ a_HxK.reshape(-1),
                             np.einsum("hk,hkd->d", a_HxK, kernel_HxKxD), atol=1e-5)
  for transform, x in ((mapping.LINEAR, kernel_DxO), (mapping.HEADS_IN, kernel_DxHxK),
                       (mapping.HEADS_OUT, kernel_HxKxD), (mapping.HEADS_BIAS, a_HxK)):
    np.testing.assert_array_equal(transform.from_hf(transform.to_hf(x), x.shape), x)
  assert mapping.heads_bias_to_hf(a_HxK).shape == (6,)


def test_conv_transform_matches_torch_conv2d():
  rng = np.random.default_rng(0)
  kernel_HxWxIxO = rng.normal(size=(4, 4, 1, 3)).astype(np.float32)
  image_BxHxWxC = rng.normal(size=(2, 12, 10, 1)).astype(np.float32)
  ours = jax.lax.conv_general_dilated(image_BxHxWxC, kernel_HxWxIxO, (3, 2), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  torch_out = torch.nn.functional.conv2d(torch.from_numpy(image_BxHxWxC.transpose(0, 3, 1, 2)),
                                         torch.from_numpy(mapping.conv_to_hf(kernel_HxWxIxO)), stride=(3, 2))
  np.testing.assert_allclose(np.asarray(ours), torch_out.numpy().transpose(0, 2, 3, 1), atol=1e-5)
  np.testing.assert_array_equal(mapping.CONV2D.from_hf(mapping.conv_to_hf(kernel_HxWxIxO), (4, 4, 1, 3)),
                                kernel_HxWxIxO)


# Config.

def test_config_round_trip_and_defaults():
  cfg = convert.hf_config_to_ast(transformers.ASTConfig(**HF_CONFIGS["h64-l2-a2-f10-t16"]))
  assert cfg == ASTConfig(num_classes=12, hidden=64, layers=2, heads=2, mlp=96, num_mel_bins=64, max_frames=128,
                          fstride=10, tstride=16)
  assert convert.hf_config_to_ast(convert.ast_to_hf_config(cfg)) == cfg
  default = convert.ast_to_hf_config(ASTConfig())
  assert (default.layer_norm_eps, default.hidden_act) == (1e-12, "gelu")
  assert convert.hf_config_to_ast(transformers.ASTConfig(num_labels=527)) == ASTConfig()


def test_config_rejects_what_our_model_does_not_implement():
  with pytest.raises(ValueError, match="hidden_act='gelu_new'.*qkv_bias=False"):
    convert.hf_config_to_ast(transformers.ASTConfig(hidden_act="gelu_new", qkv_bias=False))


# Parity with HF.

@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_logits_and_hidden_states_match_hf(name):
  hf = hf_classifier(name)
  cfg = convert.hf_config_to_ast(hf.config)
  ours = ast_with(cfg, convert.from_hf_state_dict(hf.state_dict(), cfg))
  x = fbank(cfg)
  # Same frames as the checkpoint: the positional-embedding resize is not on this path.
  assert cfg.grid(x.shape[1]) == cfg.grid()
  np.testing.assert_array_equal(ours.positions(x.shape[1]), ours.pos_embed[...])
  with torch.no_grad():
    hf_hidden = hf.audio_spectrogram_transformer(torch.from_numpy(x)).last_hidden_state.numpy()
  features, logits = forward(ours, jnp.asarray(x))
  print(f"{name}: max abs err hidden {max_err(features, hf_hidden):.2e}, "
        f"logits {max_err(logits, hf_logits(hf, x)):.2e}")
  np.testing.assert_allclose(features, hf_hidden, atol=ATOL, rtol=0)
  np.testing.assert_allclose(logits, hf_logits(hf, x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("block_kib", [0, 1], ids=["whole-batch-attention", "attention-in-row-blocks"])
def test_loss_gradients_match_hf(block_kib):
  """Gradients of the mean cross-entropy equal torch autograd's through HF's classifier (≤ 1e-5 absolute, 1e-4
  relative): our last block computes only the two tokens the head reads, and with `attention_block_kib=1` the
  attention runs one batch row at a time."""
  hf = hf_classifier("h64-l2-a4-stride10-overlap").train()
  cfg = dataclasses.replace(convert.hf_config_to_ast(hf.config), attention_block_kib=block_kib)
  ours = ast_with(cfg, convert.from_hf_state_dict(hf.state_dict(), cfg))
  x, labels = fbank(cfg, batch=3), np.array([0, 3, 4])
  torch.nn.functional.cross_entropy(hf(torch.from_numpy(x)).logits, torch.from_numpy(labels)).backward()
  want = mapping.flatten(convert.from_hf_state_dict({k: p.grad for k, p in hf.named_parameters()}, cfg))

  def loss(model):
    logits = model(jnp.asarray(x))
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(labels)[:, None], 1))
  got = mapping.flatten(nnx.to_pure_dict(nnx.grad(loss)(ours)))
  assert got.keys() == want.keys()
  for key in got:
    np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=1e-4, err_msg=key)


def assert_same_params(a: dict, b: dict):
  a, b = mapping.flatten(a), mapping.flatten(b)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # exact: reshapes, transposes and safetensors change no bit


def test_round_trip_through_save_pretrained(tmp_path):
  cfg = convert.hf_config_to_ast(transformers.ASTConfig(**HF_CONFIGS["h96-l3-a6-stride16"]))
  params = random_params(cfg, seed=1)
  hf = transformers.ASTForAudioClassification(convert.ast_to_hf_config(cfg))
  hf.load_state_dict({k: torch.from_numpy(v) for k, v in convert.to_hf_state_dict(params, cfg).items()},
                     strict=True)
  hf.save_pretrained(tmp_path)
  assert (tmp_path / "model.safetensors").exists()
  reloaded, info = transformers.ASTForAudioClassification.from_pretrained(tmp_path, output_loading_info=True)
  assert not any(info.values()), info
  x = fbank(cfg, seed=3)
  _, logits = forward(ast_with(cfg, params), jnp.asarray(x))
  print(f"round trip: max abs err logits {max_err(logits, hf_logits(reloaded.eval(), x)):.2e}")
  np.testing.assert_allclose(logits, hf_logits(reloaded.eval(), x), atol=ATOL, rtol=0)
  assert_same_params(convert.from_hf_state_dict(reloaded.state_dict(), cfg), params)


# transformers 4 names.

def test_transformers4_names(tmp_path):
  cfg = convert.hf_config_to_ast(transformers.ASTConfig(**HF_CONFIGS["h64-l2-a4-stride10-overlap"]))
  params = random_params(cfg, seed=4)
  old = convert.to_hf_state_dict(params, cfg, generation=4)
  layer0 = {k.split("layer.0.", 1)[1] for k in old if ".layer.0." in k}
  assert layer0 == {f"{m}.{p}" for p in ("weight", "bias") for m in (
      "attention.attention.query", "attention.attention.key", "attention.attention.value",
      "attention.output.dense", "intermediate.dense", "output.dense", "layernorm_before", "layernorm_after")}
  assert {k for k in old if "layer." not in k} == {
      f"audio_spectrogram_transformer.{k}" for k in (
          "embeddings.cls_token", "embeddings.distillation_token", "embeddings.position_embeddings",
          "embeddings.patch_embeddings.projection.weight", "embeddings.patch_embeddings.projection.bias",
          "layernorm.weight", "layernorm.bias")} | {
      "classifier.layernorm.weight", "classifier.layernorm.bias", "classifier.dense.weight", "classifier.dense.bias"}
  assert_same_params(convert.from_hf_state_dict(old, cfg), params)
  # transformers 5 renames transformers 4 checkpoints itself on load: it must agree with our table.
  convert.ast_to_hf_config(cfg).save_pretrained(tmp_path)
  safetensors.torch.save_file({k: torch.from_numpy(v) for k, v in old.items()}, tmp_path / "model.safetensors",
                              metadata={"format": "pt"})
  hf, info = transformers.ASTForAudioClassification.from_pretrained(tmp_path, output_loading_info=True)
  assert not any(info.values()), info
  x = fbank(cfg, seed=5)
  _, logits = forward(ast_with(cfg, params), jnp.asarray(x))
  np.testing.assert_allclose(logits, hf_logits(hf.eval(), x), atol=ATOL, rtol=0)


# ASTModel checkpoints: no prefix, no classifier.

@pytest.mark.parametrize("generation", [5, 4])
def test_astmodel_checkpoint_loads_backbone_and_reports_head(generation, caplog):
  hf_config = transformers.ASTConfig(**HF_CONFIGS["h64-l2-a2-f10-t16"])
  torch.manual_seed(6)
  backbone = perturbed(transformers.ASTModel(hf_config), seed=6)
  cfg = convert.hf_config_to_ast(hf_config)
  # The ASTModel checkpoint in `generation`'s names: an exported classifier's keys, prefix and head dropped.
  full = mapping.flatten(random_params(cfg, seed=7))
  full.update(mapping.flatten(convert.from_hf_state_dict(backbone.state_dict(), cfg)))
  state_dict = {k.removeprefix(convert.PREFIX): v
                for k, v in convert.to_hf_state_dict(mapping.unflatten(full), cfg, generation).items()
                if not k.startswith("classifier.")}
  model = ast_with(cfg, random_params(cfg, seed=8))
  head_before = mapping.flatten(nnx.to_pure_dict(nnx.state(model.head, nnx.Param)))
  with caplog.at_level(logging.WARNING):
    imported = convert.from_hf_state_dict(state_dict, cfg)
  assert f"ASTModel (transformers {generation})" in caplog.text
  assert all(key in caplog.text for key in ("head_norm.scale", "head_norm.bias", "head.kernel", "head.bias"))
  assert not any(key.startswith("head") for key in mapping.flatten(imported))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, imported)
  nnx.update(model, state)
  assert_same_params(nnx.to_pure_dict(nnx.state(model.head, nnx.Param)), mapping.unflatten(head_before))
  x = fbank(cfg, seed=9)
  with torch.no_grad():
    expected = backbone(torch.from_numpy(x)).last_hidden_state.numpy()
  features, _ = forward(model, jnp.asarray(x))
  np.testing.assert_allclose(features, expected, atol=ATOL, rtol=0)


# Errors name the keys.

def test_missing_unknown_and_misshaped_keys_are_named():
  cfg = convert.hf_config_to_ast(transformers.ASTConfig(**HF_CONFIGS["h64-l2-a4-stride10-overlap"]))
  params = random_params(cfg, seed=10)
  state_dict = convert.to_hf_state_dict(params, cfg)
  missing = dict(state_dict)
  del missing["audio_spectrogram_transformer.layers.1.attention.k_proj.bias"]
  with pytest.raises(ValueError, match=re.escape("missing keys ['audio_spectrogram_transformer.layers.1.attention"
                                                 ".k_proj.bias'], unexpected keys []")):
    convert.from_hf_state_dict(missing, cfg)
  unknown = dict(state_dict, **{"audio_spectrogram_transformer.layers.0.attention.rotary.weight": np.zeros(3)})
  with pytest.raises(ValueError, match=re.escape("unexpected keys ['audio_spectrogram_transformer.layers.0"
                                                 ".attention.rotary.weight']")):
    convert.from_hf_state_dict(unknown, cfg)
  with pytest.raises(ValueError, match=re.escape("audio_spectrogram_transformer.embeddings.position_embeddings")):
    convert.from_hf_state_dict(state_dict, dataclasses.replace(cfg, max_frames=128))
  flat = mapping.flatten(params)
  del flat["blocks.0.fc1.bias"]
  with pytest.raises(ValueError, match=re.escape("missing keys ['blocks.0.fc1.bias']")):
    convert.to_hf_state_dict(mapping.unflatten(flat), cfg)


# Other frame counts: our model resizes the positional embeddings' time axis (HF's model cannot).

def test_other_frame_counts_run():
  cfg = convert.hf_config_to_ast(transformers.ASTConfig(**HF_CONFIGS["h64-l2-a4-stride10-overlap"]))
  model = ast_with(cfg, random_params(cfg, seed=11))
  for frames in (64, 160):
    assert cfg.grid(frames) != cfg.grid()
    f, t = cfg.grid(frames)
    assert model.positions(frames).shape == (1, 2 + f * t, cfg.hidden)
    features, logits = forward(model, jnp.asarray(fbank(cfg, frames=frames)))
    assert features.shape == (2, 2 + f * t, cfg.hidden)
    assert logits.shape == (2, cfg.num_classes) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_train_flops_count_what_the_forward_computes(pool):
  """`train_flops` / 3 (the forward's matmul FLOPs) is XLA's FLOP count of the compiled forward less its
  elementwise work (softmax, GELU, norms: 3–4 % here); with pool="cls" the last block's two tokens, not every
  token, count (counting every token would put the ratio at 0.77)."""
  from jaxspeech.ast import family
  from tests.helpers import load_config

  cfg = load_config()
  cfg.model.update(hidden=64, layers=3, heads=4, mlp=128, max_frames=128, fstride=10, tstride=10, pool=pool)
  cfg.train.batch_size = 2
  model = AST(family.model_config(cfg), nnx.Rngs(0))
  x = jnp.zeros((2, 128, cfg.model.num_mel_bins), jnp.float32)
  counted = jax.jit(lambda x: model(x)).lower(x).compile().cost_analysis()["flops"]
  analytic = family.train_flops(cfg) / 3
  assert 1.0 < counted / analytic < 1.06, (counted, analytic)
