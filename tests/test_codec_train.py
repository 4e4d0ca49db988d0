"""Codec and vocoder GAN training: the CLI as a user runs it, the stop-gradient split, the warm-up, `vocode`."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxspeech.codec import family, sizes
from jaxspeech.gan import losses
from jaxspeech.vocoder import family as vocoder_family
from jaxspeech.train import optim
from tests.helpers import ROOT, load_config

ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
# Small enough to compile quickly on a 2-core CPU; everything else is the `tiny` variant.
SMALL = {"gan.periods": (2, 3), "gan.windows": (512, 256), "train.batch_size": 2, "train.steps": 2,
         "train.log_every": 1, "train.eval_every": 2, "train.checkpoint_every": 2, "data.eval_crop_seconds": 0.3,
         "optim.warmup_steps": 1}
CODEC_SMALL = {**SMALL, "model.decoder.depth": 1}
VOCODER_SMALL = {**SMALL, "model.decoder.depth": 1}


def _train(config: str, workdir, corpus_path, overrides: dict, command: str = "train"):
  cmd = [sys.executable, "-m", "jaxspeech.cli", command, f"--config={config}", f"--workdir={workdir}",
         f"--config.data.path={corpus_path}", *(f"--config.{k}={v!r}" for k, v in overrides.items())]
  result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_codec_trains_and_evaluates_through_the_cli(corpus_path, tmp_path):
  _train("configs/codec.py:tiny", tmp_path, corpus_path, CODEC_SMALL)
  lines = _metrics(tmp_path)
  steps = [m for m in lines if "loss" in m]
  assert [m["step"] for m in steps] == [1, 2]
  for m in steps:
    for key in ("loss", "g_loss", "d_loss", "mel", "adversarial", "feature_matching", "grad_norm"):
      assert math.isfinite(m[key]), (key, m)
  evals = [m for m in lines if "eval/mel_distance" in m]
  assert evals and 0 < evals[-1]["eval/mel_distance"] and 0 <= evals[-1]["eval/stoi"] <= 1
  assert -1 <= evals[-1]["eval/pesq"] <= 4.7
  result = _train("configs/codec.py:tiny", tmp_path, corpus_path, CODEC_SMALL, command="eval")
  assert "eval/pesq" in result.stdout and "eval/stoi" in result.stdout


@pytest.mark.slow
def test_vocoder_trains_through_the_cli_and_vocodes(corpus_path, tmp_path):
  _train("configs/vocoder.py:tiny", tmp_path, corpus_path, VOCODER_SMALL)
  steps = [m for m in _metrics(tmp_path) if "loss" in m]
  assert [m["step"] for m in steps] == [1, 2] and all(math.isfinite(m["loss"]) for m in steps)
  mel_BxTxM = jnp.zeros((1, 12, 100)) - 5.0
  wav_BxS = vocoder_family.vocode(str(tmp_path), mel_BxTxM)
  assert wav_BxS.shape == (1, 12 * 256) and bool(jnp.all(jnp.isfinite(wav_BxS)))


def _small_cfg(name: str):
  cfg = load_config(name)
  cfg.update_from_flattened_dict(CODEC_SMALL if name == "codec" else VOCODER_SMALL)
  return cfg


def _batch(samples: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return {"audio": jnp.asarray(0.2 * rng.standard_normal((2, samples)), jnp.float32),
          "audio_lengths": jnp.full((2,), samples, jnp.int32), "valid": jnp.ones((2,), bool)}


def _grads_by_player(fam, cfg, batch, term: str, step: int = 5):
  """{"generator": max |grad|, "discriminator": max |grad|} of one loss term (a metric) or the total ("loss") at
  optimizer step `step`."""
  model = fam.build_model(cfg, nnx.Rngs(0))
  # At init the ISTFT head gives silence (the codec's features are all zero, see the xfail above), whose mels sit
  # below the log floor (no gradient): a random head makes audible output.
  for i, param in enumerate((model.decoder.head.out.kernel, model.decoder.head.out.bias)):
    param[...] = 0.3 * jax.random.normal(jax.random.PRNGKey(i), param.shape)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def fn(p):
    total, metrics = fam.loss(nnx.merge(graphdef, p, rest), batch, None, jnp.int32(step), cfg)
    return total if term == "loss" else metrics[term]

  grads = jax.jit(jax.grad(fn))(params)
  out = {"generator": 0.0, "discriminator": 0.0}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    player = "discriminator" if losses.is_discriminator(optim.param_path(path)) else "generator"
    out[player] = max(out[player], float(jnp.max(jnp.abs(g))))
  return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["codec", "vocoder"])
def test_each_player_learns_only_from_its_own_loss(name):
  fam = {"codec": family, "vocoder": vocoder_family}[name]
  cfg = _small_cfg(name)
  g = _grads_by_player(fam.FAMILY, cfg, _batch(3200), "g_loss", step=5)
  d = _grads_by_player(fam.FAMILY, cfg, _batch(3200), "d_loss", step=5)
  assert g["discriminator"] == 0.0 and g["generator"] > 0.0, g
  assert d["generator"] == 0.0 and d["discriminator"] > 0.0, d


@pytest.mark.slow
@pytest.mark.parametrize("name", ["codec", "vocoder"])
def test_generator_and_discriminators_have_separate_optimizers(name):
  """Each player is clipped by its own gradient norm: the generator's update is the same, bit for bit, whether the
  discriminators' gradients are 1 or 1e6 (one shared norm would scale the generator's gradients below AdamW's eps,
  and its first update from ~lr to ~1e-4 lr)."""
  fam, cfg = {"codec": family, "vocoder": vocoder_family}[name], _small_cfg(name)
  cfg.optim.warmup_steps = 0   # a nonzero first update
  assert (cfg.optim.b1, cfg.optim.b2) == (0.8, 0.9) and not cfg.optim.groups.discriminator
  params = nnx.state(nnx.eval_shape(lambda: fam.build_model(cfg, nnx.Rngs(0))), nnx.Param)
  params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params)
  tx, schedules = optim.make(cfg.optim, cfg.train.steps, params, fam.FAMILY.param_groups)
  assert set(schedules) == {"default", "discriminator"}

  def grads(d_scale):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full(x.shape, d_scale if losses.is_discriminator(optim.param_path(path)) else 1.0),
        params)

  def generator_update(g):
    updates, _ = tx.update(g, tx.init(params), params)
    return [u for path, u in jax.tree_util.tree_leaves_with_path(updates)
            if not losses.is_discriminator(optim.param_path(path))]

  jax.tree.map(np.testing.assert_array_equal, generator_update(grads(1.0)), generator_update(grads(1e6)))
  assert max(float(jnp.max(jnp.abs(u))) for u in generator_update(grads(1.0))) > 0


def test_codec_param_groups_freeze_the_w2vbert_teacher():
  cfg = _small_cfg("codec")
  cfg.model = ml_collections.ConfigDict(dataclasses.asdict(sizes.tiny_semantic()))
  params = nnx.state(nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0))), nnx.Param)
  labels = {optim.param_path(p): family.FAMILY.param_groups(optim.param_path(p), x)
            for p, x in jax.tree_util.tree_leaves_with_path(params)}
  assert {path[0] for path, group in labels.items() if group == "frozen"} == {"semantic_model"}
  assert {path[0] for path, group in labels.items() if group == "discriminator"} == {"discriminator",
                                                                                     "spec_discriminator"}
  assert "semantic_encoder" in {path[0] for path, group in labels.items() if group == "default"}
  optim.make(cfg.optim, cfg.train.steps, params, family.FAMILY.param_groups)   # every group is configured


def test_generator_only_warmup_leaves_the_discriminators_alone():
  cfg = _small_cfg("codec")
  cfg.gan.warmup_steps = 3
  during = _grads_by_player(family.FAMILY, cfg, _batch(3200), "loss", step=2)
  mel_only = _grads_by_player(family.FAMILY, cfg, _batch(3200), "mel", step=2)
  after = _grads_by_player(family.FAMILY, cfg, _batch(3200), "loss", step=3)
  assert during["discriminator"] == 0.0 and during["generator"] > 0.0, during
  np.testing.assert_allclose(during["generator"], cfg.gan.mel_weight * mel_only["generator"], rtol=1e-5)
  assert after["discriminator"] > 0.0, after


@pytest.mark.parametrize("name", ["codec", "vocoder"])
def test_base_variants_have_the_published_shapes(name):
  cfg = load_config(name, "base")
  assert (cfg.optim.b1, cfg.optim.b2, cfg.optim.clip_norm) == (0.8, 0.9, 1.0)
  assert tuple(cfg.gan.periods) == (2, 3, 5, 7, 11) and tuple(cfg.gan.windows) == (2048, 1024, 512)
  if name == "codec":
    assert family.model_config(cfg) == sizes.base()
  else:
    assert (cfg.model.sample_rate, cfg.model.n_mels, cfg.model.n_fft, cfg.model.hop) == (24000, 100, 1024, 256)
    assert (cfg.model.decoder.dim, cfg.model.decoder.depth) == (512, 8)
  with pytest.raises(ValueError, match="unknown variant"):
    load_config(name, "huge")


def test_codec_eval_step_scores_valid_rows_on_the_host():
  cfg = _small_cfg("codec")
  graphdef, state = nnx.split(family.build_model(cfg, nnx.Rngs(0)))
  batch = _batch(8000)
  batch["valid"] = jnp.array([True, False])
  out = jax.jit(lambda s, b: family.FAMILY.evaluate(nnx.merge(graphdef, s), b, cfg))(state, batch)
  sums = {k: v for k, v in out.items() if isinstance(v, tuple)}
  sums.update(family.FAMILY.evaluate_on_host(jax.device_get({k: v for k, v in out.items() if k not in sums}), cfg))
  assert set(sums) == {"mel_distance", "stoi", "pesq"}
  for name, (total, count) in sums.items():
    assert float(count) == 1.0 and math.isfinite(float(total)), name
  assert -1.0 <= float(sums["pesq"][0]) <= 4.7 and 0.0 <= float(sums["stoi"][0]) <= 1.0


def test_a_semantic_codec_trains_on_the_corpus_only_with_its_w2vbert_teacher(corpus_path):
  """`tiny_semantic` (a teacher in the model) gets corpus batches; a semantic config without one is refused."""
  cfg = load_config("codec", "tiny_semantic")
  cfg.data.path = corpus_path
  assert cfg.model.semantic.enabled and cfg.model.semantic.w2vbert
  family.make_data(cfg, "train", train=True, shard_index=0, shard_count=1)
  cfg.model.semantic.w2vbert = None
  with pytest.raises(ValueError, match="w2v-BERT teacher"):
    family.make_data(cfg, "train", train=True, shard_index=0, shard_count=1)
