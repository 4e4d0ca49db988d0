"""FastConformer CTC: parity with random-init HF `ParakeetForCTC` (float32 on CPU) on a padded batch of two,
in eval mode (running BatchNorm statistics) and train mode (batch statistics and their update), output
lengths, the converter's key table (exact round trip, strictness, config.json both ways) and its HF directory
export and import."""

import dataclasses
import functools
import types

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from jaxspeech.asr import convert
from jaxspeech.asr.model import ASRConfig, FastConformerCTC, output_lengths
from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import ConversionError

# float32, ours vs PyTorch on CPU, on the valid frames. Measured max abs error: eval 1.2e-6 (encoder output,
# std 1.0) and 8.3e-7 (logits, std 0.8); train mode 1.8e-5 (logits: batch statistics over 18 frames).
ATOL = 1e-5
TRAIN_ATOL = 1e-4
STATS_ATOL = 1e-6   # running mean/var after one train-mode step (std of the change ~0.1)
FRAMES, VALID = 67, 41   # row 0 is all valid, row 1 has VALID valid frames and noise after them

CONFIGS = {
    "h64-l2-a4-mel80-k9-x8": ASRConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        subsampling_conv_channels=16, num_mel_bins=80, vocab_size=32),
    "h48-l2-a2-mel32-k5-x4-nobias-relu-unscaled": ASRConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, conv_kernel_size=5,
        subsampling_factor=4, subsampling_conv_channels=8, num_mel_bins=32, vocab_size=29, attention_bias=False,
        convolution_bias=False, scale_input=False, hidden_act="relu"),
}
EVAL = next(iter(CONFIGS))
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_positions=0.0, layerdrop=0.0)


def hf_model(cfg: ASRConfig, seed: int = 0) -> transformers.ParakeetForCTC:
  """A random ParakeetForCTC with noise on every param (HF starts biases at 0 and norms at 1) and random running
  statistics (HF starts them at 0 and 1), in eval mode."""
  torch.manual_seed(seed)
  model = transformers.ParakeetForCTC(transformers.ParakeetCTCConfig(**convert.hf_config(cfg)))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
    for name, buffer in model.named_buffers():
      if name.endswith("running_mean"):
        buffer.copy_(0.3 * torch.randn_like(buffer))
      elif name.endswith("running_var"):
        buffer.copy_(0.5 + torch.rand_like(buffer))
  return model.eval()


def state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def ours_with(cfg: ASRConfig, variables: dict[str, np.ndarray]) -> FastConformerCTC:
  """A FastConformerCTC holding `variables` (params and BatchNorm statistics), without running the random init."""
  model = nnx.eval_shape(lambda: FastConformerCTC(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  nnx.replace_by_pure_dict(state, mapping.unflatten(variables))
  nnx.update(model, state)
  return model


def batch(cfg: ASRConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  mel = np.random.default_rng(seed).normal(size=(2, FRAMES, cfg.num_mel_bins)).astype(np.float32)
  mask = np.zeros((2, FRAMES), np.int64)
  mask[0], mask[1, :VALID] = 1, 1
  return mel, mask


@functools.partial(nnx.jit, static_argnames="deterministic")
def encode(model: FastConformerCTC, mel, mask, deterministic: bool = True, key=None):
  """(encoder output, valid mask)."""
  return model.encode(mel, mask, deterministic=deterministic, key=key)


@functools.partial(nnx.jit, static_argnames="deterministic")
def logits_of(model: FastConformerCTC, mel, mask, deterministic: bool = True, key=None):
  """(logits, valid mask)."""
  return model(mel, mask, deterministic=deterministic, key=key)


def hf_forward(model: transformers.ParakeetForCTC, mel, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  with torch.no_grad():
    encoded = model.encoder(torch.from_numpy(mel), attention_mask=torch.from_numpy(mask))
    logits = model(torch.from_numpy(mel), attention_mask=torch.from_numpy(mask)).logits
  return encoded.last_hidden_state.numpy(), logits.numpy(), encoded.attention_mask.numpy().astype(bool)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_eval_parity(name):
  cfg = CONFIGS[name]
  hf = hf_model(cfg)
  mel, mask = batch(cfg)
  hf_hidden, hf_logits, hf_valid = hf_forward(hf, mel, mask)
  model = ours_with(cfg, convert.from_torch(state_dict(hf), cfg))
  (hidden, valid), (logits, valid_too) = (map(np.asarray, fn(model, mel, mask)) for fn in (encode, logits_of))
  np.testing.assert_array_equal(valid, valid_too)
  assert logits.dtype == np.float32 and logits.shape == hf_logits.shape
  np.testing.assert_array_equal(valid, hf_valid)
  assert 0 < hf_valid[1].sum() < hf_valid[0].sum()   # the padding mask is exercised
  assert hf_hidden[hf_valid].std() > 0.1 and hf_logits[hf_valid].std() > 0.1   # not a comparison of near-zeros
  np.testing.assert_allclose(hidden[valid], hf_hidden[hf_valid], rtol=0, atol=ATOL)
  np.testing.assert_allclose(logits[valid], hf_logits[hf_valid], rtol=0, atol=ATOL)


def test_running_statistics_are_used():
  """With HF's initial statistics (0, 1) in place of the random ones, the logits move by far more than ATOL: the
  eval parity above depends on converting them."""
  cfg = CONFIGS[EVAL]
  hf = hf_model(cfg)
  mel, mask = batch(cfg)
  _, hf_logits, hf_valid = hf_forward(hf, mel, mask)
  variables = convert.from_torch(state_dict(hf), cfg)
  for path in convert.batch_stat_paths(cfg):
    variables[path] = np.full_like(variables[path], 1.0 if path.endswith(".var") else 0.0)
  logits, _ = map(np.asarray, logits_of(ours_with(cfg, variables), mel, mask))
  assert np.abs(logits[hf_valid] - hf_logits[hf_valid]).max() > 1000 * ATOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_lengths(name):
  cfg = CONFIGS[name]
  hf = hf_model(cfg)
  lengths = np.arange(0, 300)
  expected = hf._get_subsampling_output_length(torch.from_numpy(lengths)).numpy()
  np.testing.assert_array_equal(output_lengths(lengths, cfg), expected)
  np.testing.assert_array_equal(np.asarray(output_lengths(jax.numpy.asarray(lengths), cfg)), expected)
  assert [output_lengths(int(n), cfg) for n in lengths[:20]] == list(expected[:20])


def test_train_mode_parity():
  """Train mode without dropout: batch statistics (padding included, as torch), rematerialised blocks, and the
  running statistics written back; flax updates the variance with the biased batch variance, torch with the
  unbiased one (factor n / (n - 1) for n = B·N frames), which the expected value accounts for."""
  cfg = dataclasses.replace(CONFIGS[EVAL], remat=True, **NO_DROPOUT)
  hf = hf_model(cfg)
  before = state_dict(hf)
  model = ours_with(cfg, convert.from_torch(before, cfg))
  mel, mask = batch(cfg)
  hf.train()
  with torch.no_grad():
    hf_logits = hf(torch.from_numpy(mel), attention_mask=torch.from_numpy(mask)).logits.numpy()
  after = state_dict(hf)
  logits, valid = map(np.asarray, logits_of(model, mel, mask, deterministic=False))
  np.testing.assert_allclose(logits[valid], hf_logits[valid], rtol=0, atol=TRAIN_ATOL)
  stats = mapping.flatten(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  frames = 2 * valid.shape[1]
  for i in range(cfg.num_hidden_layers):
    key = f"encoder.layers.{i}.conv.norm."
    mean0, var0, mean1, var1 = (x[key + s] for x in (before, after) for s in ("running_mean", "running_var"))
    assert np.abs(mean1 - mean0).max() > 0.01   # the step moved them
    np.testing.assert_allclose(stats[f"blocks.{i}.conv.norm.mean"], mean1, rtol=0, atol=STATS_ATOL)
    biased_var1 = 0.9 * var0 + (var1 - 0.9 * var0) * (frames - 1) / frames
    np.testing.assert_allclose(stats[f"blocks.{i}.conv.norm.var"], biased_var1, rtol=0, atol=STATS_ATOL)


def test_trains_in_the_train_step_pattern():
  """Train mode inside `jax.value_and_grad` of a function that merges the model from params and fresh copies of
  `rest` (as `jaxspeech.train.step` does): the batch-statistics logits and the updated running statistics of the
  eager path, finite gradients."""
  cfg = dataclasses.replace(CONFIGS[EVAL], **NO_DROPOUT)
  variables = convert.from_torch(state_dict(hf_model(cfg)), cfg)
  model = ours_with(cfg, variables)
  mel, mask = batch(cfg)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, rest):
    trained = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    logits, valid = trained(mel, mask, deterministic=False)
    return (logits * valid[..., None]).sum(), (logits, nnx.state(trained, nnx.BatchStat))

  (_, (logits, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, rest)
  eager = nnx.clone(model)
  expected, _ = logits_of(eager, mel, mask, deterministic=False)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), rtol=0, atol=ATOL)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  ours = mapping.flatten(nnx.to_pure_dict(stats))
  theirs = mapping.flatten(nnx.to_pure_dict(nnx.state(eager, nnx.BatchStat)))
  for path in convert.batch_stat_paths(cfg):
    np.testing.assert_allclose(ours[path], theirs[path], rtol=0, atol=STATS_ATOL, err_msg=path)
    assert np.abs(ours[path] - variables[path]).max() > 100 * STATS_ATOL, path  # they did move


def test_layerdrop_one_skips_every_block():
  """layerdrop = 1 in training skips every block, as HF's does, and leaves the running statistics alone."""
  cfg = dataclasses.replace(CONFIGS[EVAL], **{**NO_DROPOUT, "layerdrop": 1.0})
  hf = hf_model(cfg)
  variables = convert.from_torch(state_dict(hf), cfg)
  model = ours_with(cfg, variables)
  mel, mask = batch(cfg)
  hf.train()
  with torch.no_grad():
    hf_hidden = hf.encoder(torch.from_numpy(mel), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  hidden, valid = map(np.asarray, encode(model, mel, mask, deterministic=False, key=jax.random.key(0)))
  np.testing.assert_allclose(hidden[valid], hf_hidden[valid], rtol=0, atol=ATOL)
  stats = mapping.flatten(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  for path in convert.batch_stat_paths(cfg):
    np.testing.assert_array_equal(stats[path], variables[path])


def test_dropout_key():
  cfg = dataclasses.replace(CONFIGS[EVAL], dropout=0.2, attention_dropout=0.2, activation_dropout=0.2)
  model = ours_with(cfg, convert.from_torch(state_dict(hf_model(cfg)), cfg))
  mel, mask = batch(cfg)
  with pytest.raises(ValueError, match="needs a `key`"):
    model(mel, mask, deterministic=False)
  runs = [np.asarray(logits_of(nnx.clone(model), mel, mask, False, jax.random.key(k))[0]) for k in (0, 0, 1)]
  np.testing.assert_array_equal(runs[0], runs[1])
  assert np.abs(runs[0] - runs[2]).max() > 0.1


@pytest.mark.parametrize("name", list(CONFIGS))
def test_convert_round_trip_is_exact(name):
  cfg = CONFIGS[name]
  sd = state_dict(hf_model(cfg))
  variables = convert.from_torch(sd, cfg)
  assert set(variables) == set(convert.variable_shapes(cfg))   # every param and statistic of the model
  back = convert.to_torch(variables, cfg)
  assert back.keys() == sd.keys()
  for key, value in sd.items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_convert_names_every_problem():
  cfg = CONFIGS[EVAL]
  sd = state_dict(hf_model(cfg))
  sd.pop("encoder.layers.1.self_attn.bias_v")
  sd["encoder.layers.0.conv.depthwise_conv.weight"] = sd["encoder.layers.0.conv.depthwise_conv.weight"][..., :3]
  sd["encoder.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ConversionError) as e:
    convert.from_torch(sd, cfg)
  assert any("encoder.layers.1.self_attn.bias_v" in p for p in e.value.problems)
  assert any("encoder.extra.weight" in p for p in e.value.problems)
  sd.pop("encoder.extra.weight")
  sd["encoder.layers.1.self_attn.bias_v"] = np.zeros((4, 16), np.float32)
  with pytest.raises(ConversionError, match="depthwise_conv.weight"):
    convert.from_torch(sd, cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_config_both_ways(name):
  cfg = CONFIGS[name]
  raw = transformers.ParakeetCTCConfig(**convert.hf_config(cfg)).to_dict()
  assert convert.config_from_hf(raw) == cfg
  assert convert.config_from_hf(raw, dtype="bfloat16", remat=True) == dataclasses.replace(cfg, dtype="bfloat16",
                                                                                           remat=True)
  with pytest.raises(ConversionError, match="pad_token_id"):
    convert.config_from_hf({**raw, "pad_token_id": 0})


def test_export_then_import(tmp_path):
  cfg = CONFIGS[EVAL]
  hf = hf_model(cfg)
  sd = state_dict(hf)
  variables = convert.from_torch(sd, cfg)
  stats = set(convert.batch_stat_paths(cfg))
  checkpoint = types.SimpleNamespace(model=dataclasses.asdict(cfg), params={k: v for k, v in variables.items()
                                                                           if k not in stats},
                                     rest={k: v for k, v in variables.items() if k in stats}, provenance={})
  (tmp_path / "full").mkdir()
  lines = convert.export_checkpoint("hf", checkpoint, str(tmp_path / "full"), types.SimpleNamespace(src=str(tmp_path)))
  assert lines[-1].startswith("no tokenizer")  # the "workdir" has none, and 32 ids are not the 28 characters
  loaded = transformers.ParakeetForCTC.from_pretrained(tmp_path / "full").eval()
  loaded_sd = state_dict(loaded)
  assert loaded_sd.keys() == sd.keys()
  for key, value in sd.items():
    np.testing.assert_array_equal(loaded_sd[key], value, err_msg=key)
  mel, mask = batch(cfg)
  np.testing.assert_array_equal(hf_forward(loaded, mel, mask)[1], hf_forward(hf, mel, mask)[1])

  imported = convert.import_checkpoint("hf", str(tmp_path / "full"), types.SimpleNamespace(remat=True, dtype="float32"))
  assert imported.model == dataclasses.asdict(dataclasses.replace(cfg, remat=True))
  stats = set(convert.batch_stat_paths(cfg))
  assert imported.params.keys() == variables.keys() - stats and imported.rest.keys() == stats
  for path, value in {**imported.params, **imported.rest}.items():
    np.testing.assert_array_equal(value, variables[path], err_msg=path)
