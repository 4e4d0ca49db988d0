"""f5-tts references for the dit tests: its backbones at small sizes, and our models holding their weights."""

import numpy as np
import torch
from flax import nnx

from jaxspeech.convert import mapping
from jaxspeech.dit import convert
from jaxspeech.dit.model import DiTConfig, build
from tests import reference_stubs

reference_stubs.stub_references()
# CFM is for test_dit_sample and test_dit_convert (as `ref.CFM`); DiT and UNetT are f5_backbone's.
from f5_tts.model import CFM, DiT, UNetT  # noqa: E402,F401  pylint: disable=wrong-import-position


def f5_kwargs(cfg: DiTConfig) -> dict:
  """f5-tts constructor arguments for `cfg` (dropout off: the references run in eval mode anyway)."""
  kwargs = dict(dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, dim_head=cfg.dim_head, ff_mult=cfg.ff_mult,
                mel_dim=cfg.mel_dim, text_num_embeds=cfg.text_num_embeds, text_dim=cfg.text_dim,
                text_mask_padding=cfg.text_mask_padding, conv_layers=cfg.conv_layers,
                pe_attn_head=cfg.rope_heads or None, attn_mask_enabled=cfg.key_mask, dropout=0.0)
  if cfg.backbone == "unett":
    kwargs["skip_connect_type"] = cfg.skip_connect
  return kwargs


def f5_backbone(cfg: DiTConfig, seed: int = 0) -> torch.nn.Module:
  """Random init plus noise on every param: F5 zero-inits the AdaLN and output layers. The noise shrinks with
  the width so that a 1024-wide model's outputs stay O(10), where float32 rounding stays under the tolerance."""
  torch.manual_seed(seed)
  model = (DiT if cfg.backbone == "dit" else UNetT)(**f5_kwargs(cfg))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(min(0.1, 3.0 / cfg.dim) * torch.randn_like(p))
  return model.eval()


def ours_with(cfg: DiTConfig, params: dict):
  """Our model holding `params` (dotted paths), built without running the random init."""
  model = nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, mapping.unflatten({k: np.asarray(v) for k, v in params.items()}))
  nnx.update(model, state)
  return model


def ours_from(f5: torch.nn.Module, cfg: DiTConfig):
  return ours_with(cfg, convert.from_f5_state_dict(f5.state_dict(), cfg))
