"""The train step's pieces: gradient accumulation, EMA, weight-decay mask, parameter groups, schedules."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from jaxspeech import sharding
from jaxspeech.train import optim, state as state_lib, step as step_lib, trainer
from tests.helpers import _batch, tiny_ast


def _step(cfg, batch=None):
  t = trainer.Trainer(cfg, workdir="unused", devices=jax.devices()[:1])
  with sharding.use_rules(t.mesh, t.rules):
    state, _ = state_lib.create(t.family, cfg, t.tx, t.mesh)
    before = jax.device_get(state)
    after, metrics = t.train_step(state, t._global(batch or _batch(cfg)))  # pylint: disable=protected-access
  return before, jax.device_get(after), jax.device_get(metrics)


def test_gradient_accumulation_matches_one_big_batch(corpus_path):
  cfg = tiny_ast(corpus_path)
  _, one, m1 = _step(cfg)
  cfg.optim.accum_steps = 4
  _, four, m4 = _step(cfg)
  # Same examples, summed in another order: equal to float32 rounding.
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_ema_follows_params(corpus_path):
  cfg = tiny_ast(corpus_path, ema_decay=0.9)
  before, after, _ = _step(cfg)
  for e, p0, p1 in zip(jax.tree.leaves(after.ema), jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
    np.testing.assert_allclose(e, 0.9 * p0 + 0.1 * p1, rtol=1e-6, atol=1e-7)


def test_weight_decay_skips_norms_and_biases(corpus_path):
  cfg = tiny_ast(corpus_path)
  t = trainer.Trainer(cfg, workdir="unused", devices=jax.devices()[:1])
  with sharding.use_rules(t.mesh, t.rules):
    _, params, _ = state_lib.abstract_model(t.family, cfg)
  mask = {optim.param_path(p): m for p, m in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
  assert mask[("blocks", "0", "fc1", "kernel")] and mask[("pos_embed",)]
  assert not mask[("blocks", "0", "fc1", "bias")] and not mask[("blocks", "0", "norm1", "scale")]
  assert not mask[("blocks", "0", "attn", "query", "bias")]  # 2-D (heads, kv) but a bias


def test_frozen_group_gets_no_update_and_no_state(corpus_path):
  cfg = tiny_ast(corpus_path)
  cfg.optim.groups = {"frozen": {}, "head": {"lr": 1e-2}}
  cfg.optim.warmup_steps = 0
  groups = lambda path, x: "head" if path[0] in ("head", "head_norm") else "frozen"
  cfg_family = dataclasses.replace(trainer.registry.get("ast"), param_groups=groups)
  t = trainer.Trainer(cfg, workdir="unused", devices=jax.devices()[:1])
  with sharding.use_rules(t.mesh, t.rules):
    _, abstract_params, _ = state_lib.abstract_model(cfg_family, cfg)
    tx, schedules = optim.make(cfg.optim, 10, abstract_params, groups)
    state, shardings = state_lib.create(cfg_family, cfg, tx, t.mesh)
    step = step_lib.make_train_step(cfg_family, cfg, t.graphdef, tx, schedules, shardings, t.batch_shardings)
    before = jax.device_get(state.params)
    after, metrics = step(state, t._global(_batch(cfg)))  # pylint: disable=protected-access
  after = jax.device_get(after)
  assert set(schedules) == {"default", "head"} and "lr_head" in metrics
  np.testing.assert_array_equal(after.params["blocks"][0]["fc1"]["kernel"][...],
                                before["blocks"][0]["fc1"]["kernel"][...])
  assert not np.array_equal(after.params["head"]["kernel"][...], before["head"]["kernel"][...])
  adam_states = [s for s in jax.tree.leaves(after.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                 if isinstance(s, optax.ScaleByAdamState)]
  n_head = sum(x.size for x in jax.tree.leaves(before["head"]) + jax.tree.leaves(before["head_norm"]))
  assert sum(x.size for s in adam_states for x in jax.tree.leaves(s.mu)) == n_head


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_warmup_then_decay(kind):
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(lr=1.0, warmup_steps=10, schedule=kind, end_lr_factor=0.1))
  fn = optim.schedule(cfg, total_steps=110)
  assert float(fn(0)) == 0.0 and float(fn(5)) == pytest.approx(0.5)
  assert float(fn(10)) == pytest.approx(1.0)
  assert float(fn(60)) == pytest.approx(0.55, abs=1e-6)  # half-way: cosine and linear agree
  assert float(fn(110)) == pytest.approx(0.1, abs=1e-6)
