"""Llama parity with random-init HF `LlamaForCausalLM` (float32 on CPU), and the model's own invariants:
packed rows, the KV cache, scanned layers, remat, and sharding on an 8-device mesh."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxspeech import sharding
from jaxspeech.convert import mapping
from jaxspeech.llasa import convert
from jaxspeech.llasa.model import Cache
from jaxspeech.train import config as train_config
from tests.helpers.llama import HF_CONFIGS, hf_llama, llama_with, ours_from

ATOL = 1e-4  # float32 logits, ours vs PyTorch on CPU; measured max abs error <= 1e-6


@nnx.jit
def run(model, ids_BxL, positions_BxL=None, segment_ids_BxL=None, cache=None):
  """The model's forward pass, jitted (eager dispatch of every small op is slower than compiling)."""
  return model(ids_BxL, positions_BxL, segment_ids_BxL, cache)


def hf_logits(hf, ids_BxL) -> np.ndarray:
  with torch.no_grad():
    return hf(torch.tensor(np.asarray(ids_BxL))).logits.numpy()


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_logits_match_hf(name):
  hf = hf_llama(name)
  ids_BxL = np.random.default_rng(0).integers(0, hf.config.vocab_size, (2, 48))
  logits, _ = run(ours_from(hf), jnp.asarray(ids_BxL))
  assert logits.shape == (2, 48, hf.config.vocab_size)
  np.testing.assert_allclose(np.asarray(logits), hf_logits(hf, ids_BxL), atol=ATOL, rtol=0)


def test_llama3_scaling_changes_the_logits():
  """The long-context positions (> original_max_position_embeddings) depend on the rope scaling: guard the test."""
  hf = hf_llama("gqa2-llama3-rope-tied-vocab1003")
  ids_BxL = np.random.default_rng(1).integers(0, 1003, (1, 40))
  cfg = convert.hf_config_to_llama(hf.config.to_dict())
  plain = llama_with(dataclasses.replace(cfg, rope_factor=0.0), convert.from_hf_state_dict(hf.state_dict(), cfg))
  assert np.abs(np.asarray(run(plain, jnp.asarray(ids_BxL))[0]) - hf_logits(hf, ids_BxL)).max() > 100 * ATOL


def test_packed_rows_match_separate_sequences():
  """Two segments packed in one row, positions restarting, give each segment's logits when run alone."""
  hf = hf_llama("gqa2-llama3-rope-tied-vocab1003")
  model = ours_from(hf)
  rng = np.random.default_rng(2)
  a, b = rng.integers(0, 1003, 20), rng.integers(0, 1003, 14)
  ids = np.concatenate([a, b, np.zeros(6, int)])[None]
  segments = np.concatenate([np.ones(20), 2 * np.ones(14), np.zeros(6)]).astype(np.int32)[None]
  positions = np.concatenate([np.arange(20), np.arange(14), np.arange(6)]).astype(np.int32)[None]
  packed, _ = run(model, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(segments))
  np.testing.assert_allclose(np.asarray(packed[0, :20]), hf_logits(hf, a[None])[0], atol=ATOL, rtol=0)
  np.testing.assert_allclose(np.asarray(packed[0, 20:34]), hf_logits(hf, b[None])[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decoding_matches_one_forward_pass(scan_layers):
  hf = hf_llama("gqa4-headdim32-llama3-untied")
  model = ours_from(hf, scan_layers=scan_layers)
  ids_BxL = jnp.asarray(np.random.default_rng(3).integers(0, 777, (2, 24)))
  full, _ = run(model, ids_BxL)
  cache = Cache.empty(model.cfg, 2, 32)
  parts = []
  for start, stop in ((0, 11), (11, 12), (12, 13), (13, 24)):
    positions = jnp.broadcast_to(jnp.arange(start, stop), (2, stop - start))
    logits, cache = run(model, ids_BxL[:, start:stop], positions, cache=cache)
    parts.append(logits)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(parts, 1)), np.asarray(full), atol=ATOL, rtol=0)


def _loss_and_grads(model) -> tuple[float, dict[str, np.ndarray]]:
  """std of the logits of fixed ids, and its gradients by dotted path in the per-layer layout."""
  ids_BxL = jnp.asarray(np.random.default_rng(4).integers(0, 1003, (2, 16)))
  loss, grads = nnx.jit(nnx.value_and_grad(lambda m: m(ids_BxL)[0].std()))(model)
  flat = mapping.flatten(nnx.to_pure_dict(grads))
  return float(loss), convert.unstack_layers(flat) if model.cfg.scan_layers else flat


@functools.cache
def _reference_loss_and_grads():
  return _loss_and_grads(ours_from(hf_llama("gqa2-llama3-rope-tied-vocab1003")))


@pytest.mark.parametrize("scan_layers, remat", [(False, "full"), (True, "none"), (True, "save_dots")])
def test_scanned_and_rematerialised_layers_give_the_same_loss_and_gradients(scan_layers, remat):
  loss, grads = _reference_loss_and_grads()  # per-layer, no remat
  other_loss, other_grads = _loss_and_grads(ours_from(hf_llama("gqa2-llama3-rope-tied-vocab1003"),
                                                      scan_layers=scan_layers, remat=remat))
  np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
  assert other_grads.keys() == grads.keys()
  for key in grads:  # float32 gradients of a std over 2 · 16 · 1003 logits
    np.testing.assert_allclose(other_grads[key], grads[key], atol=1e-6, rtol=0, err_msg=key)


def test_sharded_forward_on_8_devices_with_a_vocab_not_divisible_by_8():
  """fsdp 4 × tensor 2: vocab 777 (padded to 832 rows), heads and MLP split by the logical axis rules."""
  hf = hf_llama("gqa4-headdim32-llama3-untied")
  cfg = convert.hf_config_to_llama(hf.config.to_dict(), scan_layers=True, vocab_multiple=64)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2, "sequence": 1})
  ids_BxL = np.random.default_rng(5).integers(0, 777, (4, 32))
  with sharding.use_rules(mesh, train_config.AXIS_RULES):
    model = llama_with(cfg, convert.from_hf_state_dict(hf.state_dict(), cfg))
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, sharding.param_shardings(state, mesh))
    assert state["embed"]["embedding"][...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")

    @jax.jit
    def forward(state, ids_BxL):
      return nnx.merge(graphdef, state)(ids_BxL)[0]
    logits = forward(state, jnp.asarray(ids_BxL))
  np.testing.assert_allclose(np.asarray(logits), hf_logits(hf, ids_BxL), atol=ATOL, rtol=0)
