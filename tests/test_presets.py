"""configs/presets.py: every preset loads the way `jaxspeech train` loads it and keeps the recipe's batch."""

import pytest

from tests.helpers import load_config

VARIANTS = ("llasa_1b_v5p64", "llasa_3b_v5p64", "llasa_8b_v5p64", "llasa_1b_v5e256", "llasa_3b_v5e256",
            "llasa_8b_v6e256", "llasa_1b_h100x8", "llasa_3b_h100x8", "llasa_8b_h100x64", "dit_base_v5p64",
            "dit_base_h100x8", "codec_base_v5p64", "codec_base_v5p8", "asr_0.6b_v5p64")
CHIPS = {"v5p64": 64, "v5p8": 4, "v5e256": 256, "v6e256": 256, "h100x8": 8, "h100x64": 64}


@pytest.mark.parametrize("variant", VARIANTS)
def test_preset_mesh_fills_its_topology_and_keeps_the_global_batch(variant):
  cfg = load_config("presets", variant)
  mesh = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.mesh.sequence]
  assert all(n > 0 for n in mesh)  # no -1: a preset states its layout
  chips = mesh[0] * mesh[1] * mesh[2] * mesh[3]
  assert chips == CHIPS[variant.rsplit("_", 1)[1]]
  if variant.startswith("llasa"):
    assert cfg.family == "llasa" and cfg.model.scan_layers and cfg.model.remat in ("full", "save_dots")
    assert cfg.train.batch_size == 256 and cfg.llasa.seq_len == 2048
    assert cfg.train.batch_size % (chips * cfg.optim.accum_steps) == 0
  elif variant.startswith("codec"):
    assert cfg.family == "codec" and cfg.train.batch_size == 64  # X-codec2's crops per update
  elif variant.startswith("asr"):
    assert cfg.family == "asr" and cfg.model.num_hidden_layers == 24 and cfg.model.hidden_size == 1024
    assert cfg.data.frame_budget // chips == 20_000
  else:
    assert cfg.family == "dit" and cfg.model.dim == 1024 and cfg.model.depth == 22
    assert cfg.data.frame_budget // chips == 38_400  # F5's frames per GPU per update


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match="unknown variant 'llasa_1b_v9'"):
    load_config("presets", "llasa_1b_v9")
