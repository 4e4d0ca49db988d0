"""Our DiT / UNetT against f5-tts' (random-init, perturbed, weights through our converter), float32 on CPU.

The f5-tts backbones at small sizes and our models holding their weights are tests/helpers/dit.py's.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxspeech.dit.model import DiTConfig, build
from tests.helpers.dit import f5_backbone, ours_from


@jax.jit
def _forward(graphdef_state, x, cond, text, t, valid, drop_audio, drop_text):
  model = nnx.merge(*graphdef_state)
  return model(x, cond, text, t, valid, drop_audio, drop_text)


def forward(model, x, cond, text, t, valid=None, drop_audio=False, drop_text=False) -> np.ndarray:
  return np.asarray(_forward(nnx.split(model), x, cond, text, t, valid, drop_audio, drop_text))


def inputs(cfg: DiTConfig, lengths=(24, 17, 9), seed: int = 0):
  """(x, cond, text with −1 padding, t, lens) as numpy: B = len(lengths), L = max(lengths)."""
  rng = np.random.default_rng(seed)
  b, n = len(lengths), max(lengths)
  x = rng.standard_normal((b, n, cfg.mel_dim)).astype(np.float32)
  cond = rng.standard_normal((b, n, cfg.mel_dim)).astype(np.float32)
  cond[:, n // 3:] = 0
  text = np.full((b, n // 2 + 3), -1, np.int64)
  for i, length in enumerate(lengths):
    text[i, :max(length // 2, 1)] = rng.integers(0, cfg.text_num_embeds, max(length // 2, 1))
  t = rng.uniform(size=b).astype(np.float32)
  return x, cond, text, t, np.asarray(lengths)


ATOL = 1e-4  # max abs difference of the predicted flow, float32

SMALL = dict(dim=64, depth=2, heads=4, dim_head=16, ff_mult=2, mel_dim=20, text_num_embeds=30, text_dim=32,
             conv_layers=2)
CONFIGS = {
    "dit-small": DiTConfig(**SMALL),
    "dit-rope1-nomaskpad-keymask": DiTConfig(**{**SMALL, "heads": 3, "dim": 48, "conv_layers": 1}, rope_heads=1,
                                             text_mask_padding=False, key_mask=True),
    # F5TTS_v1_Base's shapes (dim 1024, 16 heads of 64, text 512, mel 100, vocab 2545), 1 of 22 blocks, 1 of 4
    # ConvNeXt blocks: the full depth takes minutes on a 2-core CPU and adds no new shape.
    "dit-base-shape-depth1": DiTConfig(dim=1024, depth=1, heads=16, dim_head=64, ff_mult=2, mel_dim=100,
                                       text_num_embeds=2545, text_dim=512, conv_layers=1),
    "unett-concat": DiTConfig(**{**SMALL, "depth": 4, "ff_mult": 4, "text_dim": 20, "conv_layers": 0},
                              backbone="unett"),
    "unett-add-conv": DiTConfig(**{**SMALL, "ff_mult": 4, "conv_layers": 1}, backbone="unett", skip_connect="add",
                                key_mask=True),
}
CASES = {  # (use the padding mask, drop_audio_cond, drop_text)
    "mask": (True, False, False), "nomask": (False, False, False), "drop-audio": (True, True, False),
    "drop-both": (True, True, True), "nomask-drop-text": (False, False, True),
}


# Every case on the smallest DiT and UNetT; masked and fully dropped on the others (each case compiles anew),
# masked alone on the base shape.
RUNS = [(name, case) for name in CONFIGS for case in CASES
        if name in ("dit-small", "unett-concat") or case == "mask" or (case == "drop-both" and "base" not in name)]


@functools.cache
def pair(name: str):
  cfg = CONFIGS[name]
  f5 = f5_backbone(cfg)
  return cfg, f5, ours_from(f5, cfg)


@pytest.mark.parametrize("name,case", RUNS)
def test_flow_matches_f5(name, case):
  cfg, f5, ours = pair(name)
  use_mask, drop_audio, drop_text = CASES[case]
  x, cond, text, t, lens = inputs(cfg, lengths=(16, 11, 6) if cfg.dim > 512 else (24, 17, 9))
  valid = np.arange(x.shape[1])[None] < lens[:, None] if use_mask else None
  with torch.no_grad():
    want = f5(x=torch.from_numpy(x), cond=torch.from_numpy(cond), text=torch.from_numpy(text),
              time=torch.from_numpy(t), mask=None if valid is None else torch.from_numpy(valid),
              drop_audio_cond=drop_audio, drop_text=drop_text).numpy()
  got = forward(ours, x, cond, text, t, valid, drop_audio, drop_text)
  assert np.abs(want).max() > 0.1  # the reference is not trivially zero (F5 zero-inits its output layers)
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_per_example_drops_match_whole_batch_drops():
  cfg = CONFIGS["dit-small"]
  f5 = f5_backbone(cfg, seed=3)
  ours = ours_from(f5, cfg)
  x, cond, text, t, _ = inputs(cfg)
  drops = np.array([True, False, True])
  mixed = forward(ours, x, cond, text, t, None, drops, drops)
  dropped = forward(ours, x, cond, text, t, None, True, True)
  kept = forward(ours, x, cond, text, t, None, False, False)
  np.testing.assert_allclose(mixed[drops], dropped[drops], atol=1e-6)
  np.testing.assert_allclose(mixed[~drops], kept[~drops], atol=1e-6)


def test_bfloat16_compute_stays_close_and_finite():
  cfg = CONFIGS["dit-small"]
  f5 = f5_backbone(cfg, seed=1)
  x, cond, text, t, lens = inputs(cfg)
  valid = np.arange(x.shape[1])[None] < lens[:, None]
  fp32 = forward(ours_from(f5, cfg), x, cond, text, t, valid)
  bf16 = forward(ours_from(f5, dataclasses.replace(cfg, dtype="bfloat16")), x, cond, text, t, valid)
  assert bf16.dtype == np.float32 and np.isfinite(bf16).all()
  # bf16 keeps 8 mantissa bits: relative error of a few 1e-2 of the output's scale
  assert np.abs(bf16 - fp32).max() < 0.05 * np.abs(fp32).max()



FULL = (24, 17, 9, 24, 20, 24, 11, 24)
MESHES = {  # (mesh, clip lengths of the batch)
    "fsdp8": (dict(data=1, fsdp=8, tensor=1), FULL),
    "data4-tensor2": (dict(data=4, fsdp=1, tensor=2), FULL),
    "data2-fsdp2-tensor2": (dict(data=2, fsdp=2, tensor=2), FULL),
    # one row per batch shard: rows used to mix when the AdaLN modulation kept its kernel's tensor sharding
    "data2-fsdp2-tensor2-4rows": (dict(data=2, fsdp=2, tensor=2), FULL[:4]),
}


@pytest.mark.parametrize("mesh_axes,lengths", MESHES.values(), ids=MESHES.keys())
def test_sharded_forward_matches_one_device(mesh_axes, lengths):
  """Params sharded by the logical axis rules over 8 host devices, the batch over data × fsdp: the same flow
  as on one device, and the output stays batch-sharded."""
  from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel
  from jaxspeech import sharding  # pylint: disable=import-outside-toplevel
  from jaxspeech.train.config import AXIS_RULES  # pylint: disable=import-outside-toplevel
  cfg = DiTConfig(**{**SMALL, "mel_dim": 100, "depth": 1})
  model = ours_from(f5_backbone(cfg, seed=4), cfg)
  x, cond, text, t, lens = inputs(cfg, lengths=lengths)
  valid = np.arange(x.shape[1])[None] < lens[:, None]
  want = forward(model, x, cond, text, t, valid)
  mesh = sharding.make_mesh({**mesh_axes, "sequence": 1})
  with sharding.use_rules(mesh, AXIS_RULES):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0))))
    state = jax.device_put(nnx.state(model), sharding.param_shardings(state, mesh))
    rows = NamedSharding(mesh, sharding.logical_spec(("activation_batch",)))
    x, cond, text, t, valid = (jax.device_put(a, rows) for a in (x, cond, text, t, valid))
    got = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, x, cond, text, t, valid)
  np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kernel,groups", [(31, 16), (7, 4), (3, 1)])
def test_grouped_conv_gradients_match_autodiff(kernel, groups):
  """`modules.grouped_conv1d_taps`'s custom kernel gradient (a sum over taps) and its input gradient equal autodiff
  of XLA's grouped convolution (≤ 1e-4 on O(10) values, float32)."""
  from jaxspeech.dit import modules
  rng = np.random.default_rng(kernel)
  x = jnp.asarray(rng.standard_normal((3, 40, 32)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((kernel, 32 // groups, 32)) * 0.1, jnp.float32)
  target = jnp.asarray(rng.standard_normal((3, 40, 32)), jnp.float32)

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.tanh(conv(x, k)) * target)

  ours = jax.grad(loss(lambda x, k: modules.grouped_conv1d_taps(x, k, groups)), argnums=(0, 1))(x, k)
  xla = jax.grad(loss(lambda x, k: modules._same_conv(x, k, groups)), argnums=(0, 1))(x, k)  # pylint: disable=protected-access
  np.testing.assert_allclose(modules.grouped_conv1d_taps(x, k, groups), modules._same_conv(x, k, groups), atol=1e-6)  # pylint: disable=protected-access
  for got, want in zip(ours, xla):
    np.testing.assert_allclose(got, want, atol=1e-4)
