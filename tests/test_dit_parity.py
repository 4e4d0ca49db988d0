"""Our DiT / UNetT against f5-tts' (random-init, perturbed, weights through our converter), float32 on CPU."""

import dataclasses
import functools

import numpy as np
import pytest
import torch

from jaxspeech.dit.model import DiTConfig
from tests import dit_reference as ref

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


# Every case on the smallest DiT and UNetT; masked and fully dropped on the others (each case compiles anew).
RUNS = [(name, case) for name in CONFIGS for case in CASES
        if name in ("dit-small", "unett-concat") or case in ("mask", "drop-both")]


@functools.cache
def pair(name: str):
  cfg = CONFIGS[name]
  f5 = ref.f5_backbone(cfg)
  return cfg, f5, ref.ours_from(f5, cfg)


@pytest.mark.parametrize("name,case", RUNS)
def test_flow_matches_f5(name, case):
  cfg, f5, ours = pair(name)
  use_mask, drop_audio, drop_text = CASES[case]
  x, cond, text, t, lens = ref.inputs(cfg, lengths=(16, 11, 6) if cfg.dim > 512 else (24, 17, 9))
  valid = np.arange(x.shape[1])[None] < lens[:, None] if use_mask else None
  with torch.no_grad():
    want = f5(x=torch.from_numpy(x), cond=torch.from_numpy(cond), text=torch.from_numpy(text),
              time=torch.from_numpy(t), mask=None if valid is None else torch.from_numpy(valid),
              drop_audio_cond=drop_audio, drop_text=drop_text).numpy()
  got = ref.forward(ours, x, cond, text, t, valid, drop_audio, drop_text)
  assert np.abs(want).max() > 0.1  # the reference is not trivially zero (F5 zero-inits its output layers)
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_per_example_drops_match_whole_batch_drops():
  cfg = CONFIGS["dit-small"]
  f5 = ref.f5_backbone(cfg, seed=3)
  ours = ref.ours_from(f5, cfg)
  x, cond, text, t, _ = ref.inputs(cfg)
  drops = np.array([True, False, True])
  mixed = ref.forward(ours, x, cond, text, t, None, drops, drops)
  dropped = ref.forward(ours, x, cond, text, t, None, True, True)
  kept = ref.forward(ours, x, cond, text, t, None, False, False)
  np.testing.assert_allclose(mixed[drops], dropped[drops], atol=1e-6)
  np.testing.assert_allclose(mixed[~drops], kept[~drops], atol=1e-6)


def test_bfloat16_compute_stays_close_and_finite():
  cfg = CONFIGS["dit-small"]
  f5 = ref.f5_backbone(cfg, seed=1)
  x, cond, text, t, lens = ref.inputs(cfg)
  valid = np.arange(x.shape[1])[None] < lens[:, None]
  fp32 = ref.forward(ref.ours_from(f5, cfg), x, cond, text, t, valid)
  bf16 = ref.forward(ref.ours_from(f5, dataclasses.replace(cfg, dtype="bfloat16")), x, cond, text, t, valid)
  assert bf16.dtype == np.float32 and np.isfinite(bf16).all()
  # bf16 keeps 8 mantissa bits: relative error of a few 1e-2 of the output's scale
  assert np.abs(bf16 - fp32).max() < 0.05 * np.abs(fp32).max()
