"""AST params <-> HF transformers `ASTForAudioClassification` / `ASTModel` state dicts.

Import reads both HF naming generations (transformers 5 `layers.N.attention.q_proj`, transformers 4
`encoder.layer.N.attention.attention.query`), with or without the `audio_spectrogram_transformer.` prefix
and classifier (an `ASTModel` checkpoint leaves our head at its initial values, with a warning naming it).
Export writes the names of the installed transformers.

    cfg = hf_config_to_ast(hf_model.config)
    model = AST(cfg, nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, from_hf_state_dict(hf_model.state_dict(), cfg))
    nnx.update(model, state)
"""

import importlib.metadata

import numpy as np
from absl import logging
from flax import nnx

from jaxspeech.ast.model import AST, ASTConfig
from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import CONV2D, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, Rule

PREFIX = "audio_spectrogram_transformer."

# ASTModel params, transformers 5 names.
BACKBONE = (
    Rule("patch_embed.kernel", "embeddings.patch_embeddings.projection.weight", CONV2D),
    Rule("patch_embed.bias", "embeddings.patch_embeddings.projection.bias"),
    Rule("cls_token", "embeddings.cls_token"),
    Rule("dist_token", "embeddings.distillation_token"),
    Rule("pos_embed", "embeddings.position_embeddings"),
    Rule("blocks.{i}.norm1.scale", "layers.{i}.layernorm_before.weight"),
    Rule("blocks.{i}.norm1.bias", "layers.{i}.layernorm_before.bias"),
    Rule("blocks.{i}.attn.query.kernel", "layers.{i}.attention.q_proj.weight", HEADS_IN),
    Rule("blocks.{i}.attn.query.bias", "layers.{i}.attention.q_proj.bias", HEADS_BIAS),
    Rule("blocks.{i}.attn.key.kernel", "layers.{i}.attention.k_proj.weight", HEADS_IN),
    Rule("blocks.{i}.attn.key.bias", "layers.{i}.attention.k_proj.bias", HEADS_BIAS),
    Rule("blocks.{i}.attn.value.kernel", "layers.{i}.attention.v_proj.weight", HEADS_IN),
    Rule("blocks.{i}.attn.value.bias", "layers.{i}.attention.v_proj.bias", HEADS_BIAS),
    Rule("blocks.{i}.attn.out.kernel", "layers.{i}.attention.o_proj.weight", HEADS_OUT),
    Rule("blocks.{i}.attn.out.bias", "layers.{i}.attention.o_proj.bias"),
    Rule("blocks.{i}.norm2.scale", "layers.{i}.layernorm_after.weight"),
    Rule("blocks.{i}.norm2.bias", "layers.{i}.layernorm_after.bias"),
    Rule("blocks.{i}.fc1.kernel", "layers.{i}.mlp.fc1.weight", LINEAR),
    Rule("blocks.{i}.fc1.bias", "layers.{i}.mlp.fc1.bias"),
    Rule("blocks.{i}.fc2.kernel", "layers.{i}.mlp.fc2.weight", LINEAR),
    Rule("blocks.{i}.fc2.bias", "layers.{i}.mlp.fc2.bias"),
    Rule("norm.scale", "layernorm.weight"),
    Rule("norm.bias", "layernorm.bias"),
)

# ASTForAudioClassification's head, outside the backbone prefix.
HEAD = (
    Rule("head_norm.scale", "classifier.layernorm.weight"),
    Rule("head_norm.bias", "classifier.layernorm.bias"),
    Rule("head.kernel", "classifier.dense.weight", LINEAR),
    Rule("head.bias", "classifier.dense.bias"),
)

# transformers 5 module names -> transformers 4 ones; embeddings, final norm and head kept theirs.
TRANSFORMERS4 = {
    "layers.{i}.attention.q_proj.": "encoder.layer.{i}.attention.attention.query.",
    "layers.{i}.attention.k_proj.": "encoder.layer.{i}.attention.attention.key.",
    "layers.{i}.attention.v_proj.": "encoder.layer.{i}.attention.attention.value.",
    "layers.{i}.attention.o_proj.": "encoder.layer.{i}.attention.output.dense.",
    "layers.{i}.layernorm_before.": "encoder.layer.{i}.layernorm_before.",
    "layers.{i}.layernorm_after.": "encoder.layer.{i}.layernorm_after.",
    "layers.{i}.mlp.fc1.": "encoder.layer.{i}.intermediate.dense.",
    "layers.{i}.mlp.fc2.": "encoder.layer.{i}.output.dense.",
}
GENERATIONS = {5: {}, 4: TRANSFORMERS4}


def installed_generation() -> int:
  """4 or 5: the naming generation of the installed transformers (5 when it is not installed)."""
  try:
    return 4 if int(importlib.metadata.version("transformers").split(".")[0]) < 5 else 5
  except importlib.metadata.PackageNotFoundError:
    return 5


def tables(cfg: ASTConfig) -> dict[str, mapping.Table]:
  """Every HF key layout we read, by name: HF key -> (our path, transform)."""
  out = {}
  for generation, names in GENERATIONS.items():
    backbone = mapping.rename_hf(BACKBONE, names)
    classifier = [Rule(r.ours, PREFIX + r.hf, r.transform) for r in backbone] + list(HEAD)
    out[f"ASTForAudioClassification (transformers {generation})"] = mapping.expand(classifier, cfg.layers)
    out[f"ASTModel (transformers {generation})"] = mapping.expand(backbone, cfg.layers)
  return out


def param_shapes(cfg: ASTConfig) -> dict[str, tuple[int, ...]]:
  return mapping.param_shapes(nnx.state(nnx.eval_shape(lambda: AST(cfg, nnx.Rngs(0))), nnx.Param))


def hf_config_to_ast(hf_config) -> ASTConfig:
  """Our config for a `transformers.ASTConfig`; raises on settings our model does not implement."""
  d, h = hf_config.hidden_size, hf_config.num_attention_heads
  checks = (
      (f"hidden_act={hf_config.hidden_act!r} (ours is exact 'gelu')", hf_config.hidden_act == "gelu"),
      ("qkv_bias=False (ours has q/k/v biases)", hf_config.qkv_bias),
      (f"patch_size={hf_config.patch_size!r} (ours is one int)", isinstance(hf_config.patch_size, int)),
      ("head_dim != hidden_size / num_attention_heads", getattr(hf_config, "head_dim", d // h) * h == d),
      (f"num_labels={hf_config.num_labels} (ours has a classifier)", hf_config.num_labels > 0),
  )
  problems = [message for message, ok in checks if not ok]
  if problems:
    raise ValueError(f"unsupported HF AST config: {problems}")
  return ASTConfig(
      num_classes=hf_config.num_labels, hidden=hf_config.hidden_size, layers=hf_config.num_hidden_layers,
      heads=hf_config.num_attention_heads, mlp=hf_config.intermediate_size, num_mel_bins=hf_config.num_mel_bins,
      max_frames=hf_config.max_length, patch=hf_config.patch_size, fstride=hf_config.frequency_stride,
      tstride=hf_config.time_stride, layer_norm_eps=hf_config.layer_norm_eps)


def ast_to_hf_config(cfg: ASTConfig):
  """The `transformers.ASTConfig` of our config (dropout 0, exact GELU)."""
  import transformers
  return transformers.ASTConfig(
      hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
      intermediate_size=cfg.mlp, hidden_act="gelu", layer_norm_eps=cfg.layer_norm_eps, patch_size=cfg.patch,
      qkv_bias=True, frequency_stride=cfg.fstride, time_stride=cfg.tstride, max_length=cfg.max_frames,
      num_mel_bins=cfg.num_mel_bins, num_labels=cfg.num_classes)


def from_hf_state_dict(state_dict, cfg: ASTConfig) -> dict:
  """A pure dict of float32 numpy arrays for `nnx.replace_by_pure_dict(nnx.state(AST(cfg), nnx.Param), ...)`.

  `state_dict` (torch tensors or arrays) is an `ASTForAudioClassification` or `ASTModel` state dict in
  transformers 4 or 5 names; keys it lacks or has beyond that layout raise a ValueError naming them.
  """
  layouts = tables(cfg)
  layout = mapping.closest(layouts, state_dict)
  shapes = param_shapes(cfg)
  params = mapping.from_hf(state_dict, layouts[layout], shapes, f"HF {layout} state dict for {cfg}")
  unset = sorted(shapes.keys() - params.keys())
  if unset:
    logging.warning("%s checkpoint has no values for %s; they keep their initial values", layout, unset)
  return mapping.unflatten(params)


def to_hf_state_dict(params: dict, cfg: ASTConfig, generation: int | None = None) -> dict[str, np.ndarray]:
  """An `ASTForAudioClassification` state dict (float32 numpy) of `params` (`nnx.to_pure_dict` of the Params).

  Keys are in the names of transformers `generation` (4 or 5), by default the installed one's.
  """
  generation = installed_generation() if generation is None else generation
  table = tables(cfg)[f"ASTForAudioClassification (transformers {generation})"]
  return mapping.to_hf(mapping.flatten(params), table, param_shapes(cfg), f"AST params for {cfg}")
