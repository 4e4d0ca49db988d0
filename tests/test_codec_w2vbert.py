"""w2v-BERT 2.0 in JAX against transformers' `Wav2Vec2BertModel` and `SeamlessM4TFeatureExtractor`, its converter,
and the codec's semantic branch running it as a frozen teacher.

Tolerances (float32 CPU): hidden states 1e-4 max abs (measured <= 6e-6); features 3e-4 max abs on values of unit
variance (measured ~1e-4: HF computes the spectrum in complex64 from float64 frames, we in float32 throughout).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax import nnx
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

from jaxspeech import sharding
from jaxspeech.audio import features
from jaxspeech.codec import convert, family, model as model_lib, sizes
from jaxspeech.teachers.w2vbert import convert as w2vbert_convert
from jaxspeech.teachers.w2vbert.model import W2VBert
from jaxspeech.convert import cli as convert_cli, mapping
from jaxspeech.convert.mapping import ConversionError
from jaxspeech.train import optim, state as state_lib, step as step_lib
from jaxspeech.workdir import Workdir
from tests.helpers import load_config, replaced

HIDDEN_ATOL = 1e-4
FEATURES_ATOL = 3e-4
# (HF config overrides, hidden_states index compared). The distances of 20 frames go past left/right max (clipped).
CONFIGS = {
    "relative_key": (dict(hidden_size=32, num_attention_heads=4, intermediate_size=48, num_hidden_layers=3,
                          conv_depthwise_kernel_size=5, left_max_position_embeddings=6,
                          right_max_position_embeddings=3), 2),
    "rotary": (dict(hidden_size=24, num_attention_heads=2, intermediate_size=40, num_hidden_layers=2,
                    conv_depthwise_kernel_size=3, position_embeddings_type="rotary"), 2),
    "none": (dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=2,
                  conv_depthwise_kernel_size=7, position_embeddings_type=None), 1),
}


def reference(name: str) -> Wav2Vec2BertModel:
  """A random HF model whose every tensor (norms and position tables included) is far from its init."""
  torch.manual_seed(0)
  model = Wav2Vec2BertModel(Wav2Vec2BertConfig(**CONFIGS[name][0])).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.3 * torch.randn_like(p))
  return model


def load(state_dict, cfg) -> W2VBert:
  ours = W2VBert(cfg, rngs=nnx.Rngs(1))
  params = w2vbert_convert.from_state_dict({k: v.numpy() for k, v in state_dict.items()}, cfg)
  state = nnx.state(ours, nnx.Param)
  nnx.replace_by_pure_dict(state, mapping.unflatten(params))
  nnx.update(ours, state)
  return ours


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hidden_states_match_transformers(name):
  ref, layer = reference(name), CONFIGS[name][1]
  cfg = w2vbert_convert.config_from_hf(ref.config.to_dict(), layers=layer)
  features_BxTxF = np.random.default_rng(0).standard_normal((2, 20, 160)).astype(np.float32)
  with torch.no_grad():
    expected = ref(torch.from_numpy(features_BxTxF), output_hidden_states=True).hidden_states
  hidden = nnx.jit(lambda m, x: m(x))(load(ref.state_dict(), cfg), jnp.asarray(features_BxTxF))
  assert len(hidden) == layer + 1
  for i in (0, layer):
    np.testing.assert_allclose(np.asarray(hidden[i]), expected[i].numpy(), atol=HIDDEN_ATOL, rtol=0)
  assert np.abs(expected[layer].numpy() - expected[0].numpy()).max() > 0.1   # the layers do something


def test_reads_a_save_pretrained_directory_and_refuses_bad_keys(tmp_path):
  """The later layers, masked_spec_embed and the adapter are skipped; a missing or misshaped tensor is named."""
  ref = reference("relative_key")
  ref.save_pretrained(tmp_path / "hf")
  cfg, params = w2vbert_convert.read(str(tmp_path / "hf"), layers=2, ours="semantic_model.")
  assert (cfg.dim, cfg.heads, cfg.layers, cfg.left_max, cfg.position) == (32, 4, 2, 6, "relative_key")
  assert params.keys() == w2vbert_convert.param_shapes(cfg, "semantic_model.").keys()
  np.testing.assert_array_equal(params["semantic_model.layers.1.self_attn.distance_embedding"],
                                ref.state_dict()["encoder.layers.1.self_attn.distance_embedding.weight"].numpy())

  with_adapter = Wav2Vec2BertModel(Wav2Vec2BertConfig(**CONFIGS["relative_key"][0], add_adapter=True,
                                                      use_intermediate_ffn_before_adapter=True)).state_dict()
  assert any(k.startswith(("adapter.", "intermediate_ffn.")) for k in with_adapter)
  assert w2vbert_convert.from_state_dict(with_adapter, cfg, ours="semantic_model.").keys() == params.keys()

  bad = {k: v.numpy() for k, v in ref.state_dict().items() if k != "encoder.layers.1.ffn2.output_dense.bias"}
  bad["encoder.layers.0.self_attn.linear_q.weight"] = np.zeros((32, 16), np.float32)
  with pytest.raises(ConversionError) as e:
    w2vbert_convert.from_state_dict(bad, cfg)
  assert e.value.problems == ["missing key encoder.layers.1.ffn2.output_dense.bias"]
  with pytest.raises(ConversionError, match="linear_q.weight"):
    w2vbert_convert.from_state_dict({**bad, "encoder.layers.1.ffn2.output_dense.bias": np.zeros(32, np.float32)}, cfg)


def test_features_match_seamless_m4t_feature_extractor():
  """One utterance at a few lengths (even and odd fbank frame counts) and a zero-padded batch with lengths."""
  extractor = SeamlessM4TFeatureExtractor()
  rng = np.random.default_rng(0)
  for samples in (16000, 16160, 7777):
    t = np.arange(samples) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(samples)).astype(np.float32)
    expected = extractor(wav, sampling_rate=16000, return_tensors="np").input_features[0]
    np.testing.assert_allclose(np.asarray(features.w2vbert_features(wav)), expected, atol=FEATURES_ATOL, rtol=0)
  wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 12345)]
  expected = extractor(wavs, sampling_rate=16000, return_tensors="np")
  batch_BxS = np.stack([np.pad(w, (0, 16000 - len(w))) for w in wavs])
  ours, frames_B = features.w2vbert_features(batch_BxS, lengths_B=jnp.array([16000, 12345]))
  np.testing.assert_allclose(np.asarray(ours), expected.input_features, atol=FEATURES_ATOL, rtol=0)
  np.testing.assert_array_equal(np.asarray(frames_B), expected.attention_mask.sum(1))


@pytest.mark.slow
def test_codec_runs_its_teacher_on_its_input():
  """tiny_semantic: the semantic target is w2v-BERT's last hidden state of the features of the input padded by
  160 samples each side (X-codec2's XCodec2Model.forward), one frame per code; features from outside are refused."""
  cfg = sizes.tiny_semantic()
  codec = model_lib.Codec(cfg, rngs=nnx.Rngs(0))
  wav_BxS = jnp.asarray(0.1 * np.random.default_rng(0).standard_normal((2, 6400 - 7)), jnp.float32)
  target_BxNxF = nnx.jit(lambda m, w: m.teacher(w))(codec, wav_BxS)
  padded_BxS = jnp.pad(wav_BxS, ((0, 0), (160, 160 + 7)))
  expected = nnx.jit(lambda m, w: m(features.w2vbert_features(w))[-1])(codec.semantic_model, padded_BxS)
  assert target_BxNxF.shape == (2, 20, 32)
  np.testing.assert_allclose(np.asarray(target_BxNxF), np.asarray(expected), atol=1e-5, rtol=0)
  out = nnx.eval_shape(lambda m, w: m.quantize(w), codec, wav_BxS)
  assert out["semantic_target"].shape == out["semantic_pred"].shape == (2, 20, 32)
  with pytest.raises(ValueError, match="its own w2v-BERT"):
    nnx.eval_shape(lambda m, w, s: m.quantize(w, s), codec, wav_BxS, target_BxNxF)


@pytest.mark.slow
def test_train_step_trains_the_semantic_branch_and_leaves_the_teacher_alone():
  """One engine train step of tiny_semantic: the semantic MSE is in the loss, the teacher's params are bit-for-bit
  unchanged (frozen optimizer group, no moments), the semantic encoder's are updated."""
  cfg = load_config("codec", "tiny_semantic")
  cfg.update_from_flattened_dict({"gan.periods": (2,), "gan.windows": (256,), "train.batch_size": 2,
                                  "model.decoder.depth": 1, "optim.warmup_steps": 0})
  cfg.optim.groups.frozen = {}
  group_of = family.FAMILY.param_groups or (lambda path, leaf: "default")
  fam = dataclasses.replace(family.FAMILY, param_groups=lambda path, leaf: (
      "frozen" if model_lib.frozen(path) else group_of(path, leaf)))
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
  rules = [tuple(r) for r in cfg.axis_rules]
  with sharding.use_rules(mesh, rules):
    graphdef, abstract_params, _ = state_lib.abstract_model(fam, cfg)
    tx, schedules = optim.make(cfg.optim, cfg.train.steps, abstract_params, fam.param_groups)
    state, shardings = state_lib.create(fam, cfg, tx, mesh)
    batch_shardings = {k: jax.sharding.NamedSharding(mesh, sharding.logical_spec(a))
                       for k, a in fam.batch_axes(cfg).items()}
    train_step = step_lib.make_train_step(fam, cfg, graphdef, tx, schedules, shardings, batch_shardings)
    before = jax.device_get(state.params)
    rng = np.random.default_rng(0)
    batch = {"audio": jnp.asarray(0.2 * rng.standard_normal((2, 6400)), jnp.float32),
             "audio_lengths": jnp.full((2,), 6400, jnp.int32), "valid": jnp.ones((2,), bool)}
    state, metrics = train_step(state, batch)
  assert bool(metrics["finite"]) and float(metrics["semantic"]) > 0
  after = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, before["semantic_model"], after["semantic_model"])
  kernel = ("semantic_encoder", "initial_conv", "kernel")
  assert not np.array_equal(before[kernel[0]][kernel[1]][kernel[2]], after[kernel[0]][kernel[1]][kernel[2]])


@pytest.mark.slow
def test_convert_codec_imports_w2vbert_alongside_and_exports_without_it(tmp_path, capsys):
  """`jaxspeech convert codec --from xcodec2 ... --w2vbert DIR`: the workdir's model runs that w2v-BERT (its params
  bit for bit under semantic_model.*); `--to xcodec2` writes the xcodec2 keys alone and a config without it."""
  # xcodec2's GroupNorm: the export refuses tiny's 16 groups
  cfg = replaced(sizes.tiny_semantic(), **{"semantic.w2vbert": None, "decoder.norm_groups": 32})
  params = mapping.flatten(nnx.to_pure_dict(nnx.state(model_lib.Codec(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
  state_dict = convert.to_state_dict(params, cfg)
  safetensors.numpy.save_file(state_dict, str(tmp_path / "xcodec2.safetensors"))
  ref = reference("relative_key")
  ref.save_pretrained(tmp_path / "w2v-bert")
  capsys.readouterr()
  assert convert_cli.run("codec", ["--from", "xcodec2", "--src", str(tmp_path / "xcodec2.safetensors"), "--dst",
                                   str(tmp_path / "wd"), "--heads", "4", "--w2vbert",
                                   str(tmp_path / "w2v-bert"), "--w2vbert-layers", "2"]) == 0
  assert "semantic_model" not in capsys.readouterr().err
  imported = Workdir(str(tmp_path / "wd")).read_params("codec")
  assert imported.model["semantic"]["w2vbert"]["layers"] == 2
  hf = ref.state_dict()
  for ours, theirs in [("layers.1.self_attn.distance_embedding", "encoder.layers.1.self_attn.distance_embedding"),
                       ("feature_projection.layer_norm.scale", "feature_projection.layer_norm")]:
    np.testing.assert_array_equal(imported.params[f"semantic_model.{ours}"], hf[f"{theirs}.weight"].numpy())
  np.testing.assert_array_equal(imported.params["fc_prior.kernel"], params["fc_prior.kernel"])

  assert convert_cli.run("codec", ["--to", "xcodec2", "--src", str(tmp_path / "wd"), "--dst",
                                   str(tmp_path / "out")]) == 0
  assert safetensors.numpy.load_file(str(tmp_path / "out" / "model.safetensors")).keys() == state_dict.keys()
  with open(tmp_path / "out" / "config.json") as f:
    assert json.load(f)["jaxspeech_model"]["semantic"]["w2vbert"] is None
