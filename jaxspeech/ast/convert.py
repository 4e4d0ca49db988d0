"""AST / SSAST checkpoints: HF transformers `ASTForAudioClassification` / `ASTModel`, and the original
YuanGongND AST and SSAST `.pth` files. `jaxspeech convert ast` runs the functions at the end.

HF import reads both naming generations (transformers 5 `layers.N.attention.q_proj`, transformers 4
`encoder.layer.N.attention.attention.query`), with or without the `audio_spectrogram_transformer.` prefix
and classifier (an `ASTModel` checkpoint leaves our head at its initial values, with a warning naming it).
Export writes the names of the installed transformers.

    cfg = hf_config_to_ast(hf_model.config)
    model = AST(cfg, nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, from_hf_state_dict(hf_model.state_dict(), cfg))
    nnx.update(model, state)

Original checkpoints (`torch.save` of a `DataParallel` model) use timm's ViT names under `module.v.`, with
q/k/v fused into one `attn.qkv` Linear (row blocks q, k, v), the head `module.mlp_head.{0: LayerNorm,
1: Linear}`, and for SSAST pretraining the heads `module.{c,g}predlayer.{0,2}` (Linear, ReLU, Linear) and
`module.mask_embed`. They do not store the model config: shapes give the width, depth, MLP size and patch;
flags give the rest (see `add_arguments`).
"""

import dataclasses
import importlib.metadata
import json
import os

import numpy as np
from absl import logging
from flax import nnx
import safetensors.numpy

from jaxspeech.ast import adapters
from jaxspeech.ast import family as ast_family
from jaxspeech.ast.model import AST, ASTConfig
from jaxspeech.audio import features
from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import (CONV2D, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, QKV_BIAS, QKV_IN,
                                       ConversionError, Rule)
from jaxspeech.ast.ssast import SSAST
from jaxspeech.convert.workdir import Imported
from jaxspeech.data import tfds_io
from jaxspeech.workdir import Workdir

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

# Original AST / SSAST (timm ViT under `module.v.`): the encoder, the classifier `mlp_head`, SSAST's heads.
ORIGINAL = (
    Rule("patch_embed.kernel", "module.v.patch_embed.proj.weight", CONV2D),
    Rule("patch_embed.bias", "module.v.patch_embed.proj.bias"),
    Rule("cls_token", "module.v.cls_token"),
    Rule("dist_token", "module.v.dist_token"),
    Rule("pos_embed", "module.v.pos_embed"),
    Rule("blocks.{i}.norm1.scale", "module.v.blocks.{i}.norm1.weight"),
    Rule("blocks.{i}.norm1.bias", "module.v.blocks.{i}.norm1.bias"),
    Rule(("blocks.{i}.attn.query.kernel", "blocks.{i}.attn.key.kernel", "blocks.{i}.attn.value.kernel"),
         "module.v.blocks.{i}.attn.qkv.weight", QKV_IN),
    Rule(("blocks.{i}.attn.query.bias", "blocks.{i}.attn.key.bias", "blocks.{i}.attn.value.bias"),
         "module.v.blocks.{i}.attn.qkv.bias", QKV_BIAS),
    Rule("blocks.{i}.attn.out.kernel", "module.v.blocks.{i}.attn.proj.weight", HEADS_OUT),
    Rule("blocks.{i}.attn.out.bias", "module.v.blocks.{i}.attn.proj.bias"),
    Rule("blocks.{i}.norm2.scale", "module.v.blocks.{i}.norm2.weight"),
    Rule("blocks.{i}.norm2.bias", "module.v.blocks.{i}.norm2.bias"),
    Rule("blocks.{i}.fc1.kernel", "module.v.blocks.{i}.mlp.fc1.weight", LINEAR),
    Rule("blocks.{i}.fc1.bias", "module.v.blocks.{i}.mlp.fc1.bias"),
    Rule("blocks.{i}.fc2.kernel", "module.v.blocks.{i}.mlp.fc2.weight", LINEAR),
    Rule("blocks.{i}.fc2.bias", "module.v.blocks.{i}.mlp.fc2.bias"),
    Rule("norm.scale", "module.v.norm.weight"),
    Rule("norm.bias", "module.v.norm.bias"),
)
ORIGINAL_HEAD = (
    Rule("head_norm.scale", "module.mlp_head.0.weight"),
    Rule("head_norm.bias", "module.mlp_head.0.bias"),
    Rule("head.kernel", "module.mlp_head.1.weight", LINEAR),
    Rule("head.bias", "module.mlp_head.1.bias"),
)
SSAST_HEADS = (   # our SSAST model (jaxspeech.ast.ssast) holds the encoder above under `encoder.`
    Rule("mask_embed", "module.mask_embed"),
    Rule("cpred.fc1.kernel", "module.cpredlayer.0.weight", LINEAR),
    Rule("cpred.fc1.bias", "module.cpredlayer.0.bias"),
    Rule("cpred.fc2.kernel", "module.cpredlayer.2.weight", LINEAR),
    Rule("cpred.fc2.bias", "module.cpredlayer.2.bias"),
    Rule("gpred.fc1.kernel", "module.gpredlayer.0.weight", LINEAR),
    Rule("gpred.fc1.bias", "module.gpredlayer.0.bias"),
    Rule("gpred.fc2.kernel", "module.gpredlayer.2.weight", LINEAR),
    Rule("gpred.fc2.bias", "module.gpredlayer.2.bias"),
)
# Keys of original checkpoints that hold no param of ours: skipped and listed in convert.json.
ORIGINAL_UNUSED = {
    "module.v.head.weight": "timm DeiT's ImageNet head; AST never calls it",
    "module.v.head.bias": "timm DeiT's ImageNet head; AST never calls it",
    "module.v.head_dist.weight": "timm DeiT's ImageNet distillation head; AST never calls it",
    "module.v.head_dist.bias": "timm DeiT's ImageNet distillation head; AST never calls it",
    "module.p_input_fdim": "SSAST's pretraining input bins: the default of --input-fdim",
    "module.p_input_tdim": "SSAST's pretraining input frames: the default of --input-tdim",
}


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


def _under(prefix: str, rules) -> list[Rule]:
  """`rules` with `prefix` before each of our paths (our SSAST model keeps its AST under `encoder.`)."""
  return [dataclasses.replace(r, ours=prefix + r.ours if isinstance(r.ours, str) else tuple(prefix + o for o in r.ours))
          for r in rules]


def original_tables(cfg: ASTConfig) -> dict[str, mapping.Table]:
  """The original layouts we read, by name: key -> (our path(s), transform); SSAST's are for our SSAST model."""
  return {
      "AST (original)": mapping.expand(ORIGINAL + ORIGINAL_HEAD, cfg.layers),
      "AST encoder (original, no mlp_head)": mapping.expand(ORIGINAL, cfg.layers),
      "SSAST (original)": mapping.expand(_under("encoder.", ORIGINAL) + list(SSAST_HEADS), cfg.layers),
  }


def param_shapes(cfg: ASTConfig, task: str = "classify") -> dict[str, tuple[int, ...]]:
  """Dotted path -> shape of every param of our AST (`task="classify"`) or SSAST (`"ssast"`) for `cfg`."""
  if task == "ssast":
    return mapping.param_shapes(nnx.state(nnx.eval_shape(lambda: SSAST(cfg, nnx.Rngs(0))), nnx.Param))
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
  layout, params = read_state_dict(state_dict, tables(cfg), param_shapes(cfg), f"HF AST state dict for {cfg}")
  unset = sorted(param_shapes(cfg).keys() - params.keys())
  if unset:
    logging.warning("%s checkpoint has no values for %s; they keep their initial values", layout, unset)
  return mapping.unflatten(params)


def read_state_dict(state_dict, layouts: dict[str, mapping.Table], shapes, what: str
                    ) -> tuple[str, dict[str, np.ndarray]]:
  """(the name of the layout in `layouts` that `state_dict` is in, our dotted path -> float32 array).

  The layout is the one sharing most keys with `state_dict`; any key it lacks or has beyond it, and any
  shape that does not fit, is a ConversionError naming each.
  """
  layout = mapping.closest(layouts, state_dict)
  if not set(state_dict) & set(layouts[layout]):
    raise ConversionError(what, [f"no key matches an AST layout ({', '.join(layouts)}); "
                                 f"its first keys are {sorted(state_dict)[:4]}"])
  return layout, mapping.from_hf(state_dict, layouts[layout], shapes, f"{what} ({layout})")


def to_hf_state_dict(params: dict, cfg: ASTConfig, generation: int | None = None) -> dict[str, np.ndarray]:
  """An `ASTForAudioClassification` state dict (float32 numpy) of `params` (`nnx.to_pure_dict` of the Params).

  Keys are in the names of transformers `generation` (4 or 5), by default the installed one's.
  """
  generation = installed_generation() if generation is None else generation
  table = tables(cfg)[f"ASTForAudioClassification (transformers {generation})"]
  return mapping.to_hf(mapping.flatten(params), table, param_shapes(cfg), f"AST params for {cfg}")


# ------------------------------------------------------------------------------- `jaxspeech convert ast`

SOURCES = {
    "hf": "an HF directory (config.json + model.safetensors or pytorch_model.bin) of ASTForAudioClassification "
          "or ASTModel, transformers 4 or 5 names",
    "original": "a YuanGongND AST or SSAST .pth (module.v.* timm names, fused attn.qkv)",
}
TARGETS = {"hf": "an HF directory for ASTForAudioClassification.from_pretrained (ASTModel for an SSAST run)"}
# `cfg.model` fields of the ast family that are not ASTConfig's (jaxspeech.ast.family.FAMILY_FIELDS).
FAMILY_FIELDS = {"task": "classify"}
# This converter's flags, their defaults, and the conversions they apply to.
FLAGS = {"num_classes": None, "dtype": "float32", "input_fdim": None, "input_tdim": None, "fstride": None,
         "tstride": None, "heads": None, "pool": "cls", "layer_norm_eps": 1e-12, "generation": None, "labels": None}
APPLIES = {"from hf": {"num_classes", "dtype"},
           "from original": {"num_classes", "dtype", "input_fdim", "input_tdim", "fstride", "tstride", "heads", "pool",
                             "layer_norm_eps"},
           "to hf": {"generation", "labels"}}


def _check_flags(args, conversion: str) -> None:
  """A flag given to a conversion it does not apply to is an error, not silently ignored."""
  given = sorted(k for k, default in FLAGS.items() if getattr(args, k) != default and k not in APPLIES[conversion])
  if given:
    raise ConversionError(f"convert ast --{conversion}",
                          [f"--{k.replace('_', '-')} does not apply here" for k in given])


def add_arguments(parser) -> None:
  g = parser.add_argument_group("model (import)")
  g.add_argument("--num-classes", type=int, default=None,
                 help="classes of the workdir's head. hf: default num_labels; a different value starts a new, "
                      "initialised head. original: default the rows of module.mlp_head.1")
  g.add_argument("--dtype", default=FLAGS["dtype"],
                 help="compute dtype in the workdir's model config (params stay float32)")
  g = parser.add_argument_group("original checkpoints (their config is not in the file)")
  g.add_argument("--input-fdim", type=int, default=None,
                 help="mel bins (default: SSAST's module.p_input_fdim, else 128)")
  g.add_argument("--input-tdim", type=int, default=None,
                 help="frames the positional embeddings were made for (default: module.p_input_tdim, else 1024)")
  g.add_argument("--fstride", type=int, default=None, help="frequency stride (default: the patch for SSAST, else 10)")
  g.add_argument("--tstride", type=int, default=None, help="time stride (default: the patch for SSAST, else 10)")
  g.add_argument("--heads", type=int, default=None, help="attention heads (default: width / 64, DeiT's)")
  g.add_argument("--pool", choices=("cls", "mean"), default=FLAGS["pool"],
                 help="head input: cls (AST; SSAST finetuningcls) or mean of the patches (SSAST finetuningavgtok)")
  g.add_argument("--layer-norm-eps", type=float, default=FLAGS["layer_norm_eps"],
                 help="default 1e-12, as HF's converted MIT/ast-* checkpoints (timm used 1e-6, mlp_head 1e-5)")
  g = parser.add_argument_group("hf export (--to hf)")
  g.add_argument("--generation", type=int, choices=(4, 5), default=None,
                 help="transformers naming generation to write (default: the installed transformers'; "
                      "transformers 5 also reads 4)")
  g.add_argument("--labels", default=None,
                 help="id2label: a JSON list or {id: label} file, or one label per line (default: the labels of "
                      "an imported HF classifier, else the speakers of the run's dataset, else LABEL_i)")


def _model_dict(cfg: ASTConfig, task: str) -> dict:
  """config.json's "model" for `cfg`: every field of `configs/ast.py`'s `cfg.model`."""
  return {**FAMILY_FIELDS, "task": task, **dataclasses.asdict(cfg)}


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _readable(load, path: str):
  """`load(path)`, with a file it cannot parse (not a checkpoint, truncated) as a ConversionError."""
  try:
    return load(path)
  except Exception as e:  # pylint: disable=broad-except  (torch, pickle, zip and safetensors errors)
    first = str(e).splitlines()[0] if str(e) else ""
    raise ConversionError(f"cannot read {path}", [f"{type(e).__name__}: {first}"]) from None


def _hf_state_dict(src: str) -> tuple[dict, str]:
  """(state dict of numpy arrays, file name) of an HF model directory."""
  files = {name: os.path.join(src, name) for name in
           ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")}
  if os.path.exists(files["model.safetensors"]):
    return dict(_readable(safetensors.numpy.load_file, files["model.safetensors"])), "model.safetensors"
  if os.path.exists(files["model.safetensors.index.json"]):
    shards = sorted(set(_read_json(files["model.safetensors.index.json"])["weight_map"].values()))
    return {k: v for shard in shards
            for k, v in _readable(safetensors.numpy.load_file, os.path.join(src, shard)).items()}, \
        "model.safetensors.index.json"
  if os.path.exists(files["pytorch_model.bin"]):
    import torch  # pylint: disable=import-outside-toplevel
    return dict(_readable(lambda f: torch.load(f, map_location="cpu", weights_only=True),
                          files["pytorch_model.bin"])), "pytorch_model.bin"
  raise ConversionError(f"HF directory {src}", [f"has none of {sorted(files)} (it has {sorted(os.listdir(src))})"])


def import_hf(src: str, args):
  config_path = os.path.join(src, "config.json")
  if not os.path.isfile(config_path):
    raise ConversionError(f"HF directory {src}", ["has no config.json"])
  raw = _read_json(config_path)
  model_type = raw.get("model_type")
  if model_type != "audio-spectrogram-transformer":
    raise ConversionError(f"HF directory {src}", [
        f"holds a {model_type!r} model ({', '.join(raw.get('architectures') or ['architecture unknown'])}), "
        "not an AST one (model_type 'audio-spectrogram-transformer')"])
  import transformers  # pylint: disable=import-outside-toplevel
  hf_config = _readable(lambda _: transformers.ASTConfig.from_dict(raw), config_path)
  cfg = dataclasses.replace(hf_config_to_ast(hf_config), dtype=args.dtype)
  state_dict, filename = _hf_state_dict(src)
  notes, provenance = [], {}
  has_classifier = any(k.startswith("classifier.") for k in state_dict)
  if has_classifier and args.num_classes not in (None, cfg.num_classes):
    dropped = sorted(k for k in state_dict if k.startswith("classifier."))
    state_dict = {k.removeprefix(PREFIX): v for k, v in state_dict.items() if not k.startswith("classifier.")}
    notes.append(f"--num-classes {args.num_classes}: the checkpoint's {cfg.num_classes}-way classifier is not "
                 f"imported ({', '.join(dropped)}); the new head starts from its initialisation")
    provenance["not_imported"] = dropped
  cfg = dataclasses.replace(cfg, num_classes=args.num_classes or cfg.num_classes)
  layout, params = read_state_dict(state_dict, tables(cfg), param_shapes(cfg), f"HF AST checkpoint {src}")
  if provenance.get("not_imported"):
    layout = layout.replace("ASTModel", "ASTForAudioClassification") + " without its classifier"
  elif layout.startswith("ASTModel"):
    notes.append(f"{layout} checkpoint: no classifier; head_norm and head ({cfg.num_classes} classes"
                 f"{'' if args.num_classes else ', set with --num-classes'}) start from their initialisation")
  elif hf_config.id2label:
    provenance["id2label"] = {str(k): v for k, v in sorted(hf_config.id2label.items())}
  generation = 4 if "transformers 4" in layout else 5
  provenance.update(layout=layout, generation=generation, file=filename, hf_config=raw)
  return Imported(model=_model_dict(cfg, "classify"), params=params, provenance=provenance, notes=notes)


def _load_original(src: str) -> dict:
  if src.endswith(".safetensors"):
    return dict(_readable(safetensors.numpy.load_file, src))
  import torch  # pylint: disable=import-outside-toplevel
  state_dict = _readable(lambda f: torch.load(f, map_location="cpu", weights_only=True), src)
  if not isinstance(state_dict, dict):
    raise ConversionError(f"original checkpoint {src}", [f"holds a {type(state_dict).__name__}, not a state dict"])
  for wrapper in ("state_dict", "model"):  # a training checkpoint around the state dict
    if isinstance(state_dict.get(wrapper), dict) and "module.v.cls_token" not in state_dict:
      state_dict = state_dict[wrapper]
  return dict(state_dict)


def original_config(state_dict: dict, args, what: str = "original AST/SSAST checkpoint") -> tuple[ASTConfig, str]:
  """(our config, task) of an original AST / SSAST state dict: shapes give the size, `args` the rest."""
  needed = ("module.v.cls_token", "module.v.patch_embed.proj.weight", "module.v.blocks.0.mlp.fc1.weight")
  missing = [k for k in needed if k not in state_dict]
  if missing:
    raise ConversionError(what, [f"missing key {k}" for k in missing] + [
        f"(its first keys are {sorted(state_dict)[:4]}; is it an original AST/SSAST checkpoint?)"])
  ssast = any(k.startswith(("module.cpredlayer.", "module.gpredlayer.")) for k in state_dict)
  hidden = int(state_dict["module.v.cls_token"].shape[-1])
  _, channels, pf, pt = state_dict["module.v.patch_embed.proj.weight"].shape
  if channels != 1:
    raise ConversionError(what, [
        f"module.v.patch_embed.proj.weight has {channels} input channels; AST reads one (a spectrogram)"])

  def scalar(key: str, default: int) -> int:
    return int(mapping.as_numpy(state_dict[key])) if key in state_dict else default

  if ssast and args.num_classes:
    raise ConversionError("--num-classes", ["an SSAST pretraining checkpoint has no classifier; import it, then "
                                            "fine-tune with --config.train.init_from=WORKDIR"])
  if ssast:
    num_classes = 0
  elif args.num_classes:
    num_classes = args.num_classes
  elif "module.mlp_head.1.weight" in state_dict:
    num_classes = int(state_dict["module.mlp_head.1.weight"].shape[0])
  else:
    raise ConversionError(what, ["has no module.mlp_head: pass --num-classes for a new head"])
  layers = 1 + max(int(k.split(".")[3]) for k in state_dict if k.startswith("module.v.blocks."))
  cfg = ASTConfig(
      num_classes=num_classes, hidden=hidden, layers=layers, heads=args.heads or max(hidden // 64, 1),
      mlp=int(state_dict["module.v.blocks.0.mlp.fc1.weight"].shape[0]),
      num_mel_bins=args.input_fdim or scalar("module.p_input_fdim", 128),
      max_frames=args.input_tdim or scalar("module.p_input_tdim", 1024),
      patch=int(pf), time_patch=0 if pf == pt else int(pt),
      fstride=args.fstride or (int(pf) if ssast else 10), tstride=args.tstride or (int(pt) if ssast else 10),
      layer_norm_eps=args.layer_norm_eps, dtype=args.dtype, pool=args.pool)
  return cfg, "ssast" if ssast else "classify"


def import_original(src: str, args):
  state_dict = _load_original(src)
  notes, provenance = [], {}
  if not any(k.startswith("module.") for k in state_dict):  # saved without DataParallel
    state_dict = {"module." + k: v for k, v in state_dict.items()}
    provenance["prefix_added"] = "module."
  what = f"original checkpoint {src}"
  cfg, task = original_config(state_dict, args, what)
  unused = {k: why for k, why in ORIGINAL_UNUSED.items() if k in state_dict}
  state_dict = {k: v for k, v in state_dict.items() if k not in unused}
  layouts = {k: v for k, v in original_tables(cfg).items() if k.startswith("SSAST") == (task == "ssast")}
  try:
    layout, params = read_state_dict(state_dict, layouts, param_shapes(cfg, task), what)
  except ConversionError as e:
    f, t = cfg.grid()
    if any("pos_embed" in p for p in e.problems):
      e.problems.append(f"(our pos_embed has 2 + {f}×{t} rows: the patch grid of --input-fdim {cfg.num_mel_bins} "
                        f"--input-tdim {cfg.max_frames} --fstride {cfg.fstride} --tstride {cfg.tstride}; pass the "
                        "values the checkpoint was trained with)")
    raise
  if layout.startswith("AST encoder"):
    notes.append(f"{layout}: head_norm and head ({cfg.num_classes} classes) start from their initialisation")
  if unused:
    notes.append(f"not imported, unused by our model: {', '.join(unused)}")
  provenance.update(layout=layout, generation=None, unused=unused,
                    inferred={k: getattr(cfg, k) for k in ("hidden", "layers", "mlp", "patch", "time_patch")})
  return Imported(model=_model_dict(cfg, task), params=params, provenance=provenance, notes=notes)


def import_checkpoint(source: str, src: str, args):
  """`jaxspeech convert ast --from hf|original`: a `jaxspeech.convert.workdir.Imported`."""
  _check_flags(args, f"from {source}")
  return import_hf(src, args) if source == "hf" else import_original(src, args)


def _labels(path: str | None, provenance: dict, num_classes: int) -> dict[int, str] | None:
  if path:
    with open(path) as f:
      text = f.read()
    try:
      loaded = json.loads(text)
    except json.JSONDecodeError:
      loaded = [line.strip() for line in text.splitlines() if line.strip()]
    labels = dict(enumerate(loaded)) if isinstance(loaded, list) else {int(k): v for k, v in loaded.items()}
  elif provenance.get("id2label"):
    labels = {int(k): v for k, v in provenance["id2label"].items()}
  else:
    return None
  if sorted(labels) != list(range(num_classes)):
    raise ConversionError("id2label", [f"{path or 'convert.json'} gives labels for ids {sorted(labels)[:8]}..., "
                                       f"not 0..{num_classes - 1}"])
  return labels


def feature_settings(cfg: ASTConfig) -> dict:
  """The fbank `jaxspeech.ast.family.fbank` feeds `cfg`'s model: `features.kaldi_fbank` at its defaults (25 ms
  Hann frames every 10 ms), zero frames padded or cropped to `max_frames`, then `features.ast_normalize`."""
  return {"sampling_rate": ast_family.SAMPLE_RATE, "frame_length_ms": 25.0, "frame_shift_ms": 10.0,
          "window_type": "hanning", "num_mel_bins": cfg.num_mel_bins, "max_length": cfg.max_frames,
          "mean": features.AST_MEAN, "std": features.AST_STD}


# What ASTFeatureExtractor computes whatever its config says. Without torchaudio it frames 400 samples every 160
# (FFT 512); with torchaudio, 25 ms every 10 ms: the two agree, and are ours, at 16 kHz only.
HF_FIXED_FEATURES = {"sampling_rate": 16000, "frame_length_ms": 25.0, "frame_shift_ms": 10.0, "window_type": "hanning"}


def preprocessor_config(settings: dict) -> dict:
  """preprocessor_config.json of an `ASTFeatureExtractor` computing the fbank `settings` (`feature_settings`);
  a setting it cannot represent is a ConversionError naming the field."""
  problems = [f"{k}={settings[k]!r}: ASTFeatureExtractor computes {k}={v!r} only" for k, v in HF_FIXED_FEATURES.items()
              if settings[k] != v]
  if problems:
    raise ConversionError("feature extractor (preprocessor_config.json)", problems)
  return {"feature_extractor_type": "ASTFeatureExtractor", "feature_size": 1, "sampling_rate": settings["sampling_rate"],
          "num_mel_bins": settings["num_mel_bins"], "max_length": settings["max_length"], "padding_value": 0.0,
          "padding_side": "right", "do_normalize": True, "mean": settings["mean"], "std": settings["std"],
          "return_attention_mask": False}


def dataset_labels(config: dict) -> tuple[list[str] | None, str]:
  """(the class names of the run's dataset, where they came from), or (None, why there are none).

  The names are the dataset's `speaker_id` ClassLabel names, else its jaxspeech.json speakers (their index is
  the `speaker_id` the family trains on).
  """
  path = (config.get("data") or {}).get("path")
  if not path:
    return None, "the workdir's config names no dataset"
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    return None, f"its dataset {path} is not here"
  speaker_id = tfds_io.load(path).info.features["speaker_id"]
  if getattr(speaker_id, "names", None):
    return list(speaker_id.names), f"the speaker_id ClassLabel of {path}"
  speakers = tfds_io.metadata(path).get("speakers")
  if not speakers:
    return None, f"its dataset {path} names no speakers"
  return [s["name"] if isinstance(s, dict) else s for s in speakers], f"the speakers of {path}"


def export_labels(args, checkpoint, num_classes: int) -> tuple[dict[int, str] | None, str]:
  """(id2label, where it came from): --labels, else the run's dataset's names, else an imported HF classifier's;
  (None, why) when there is none of them (HF then names them LABEL_i)."""
  if args.labels:
    return _labels(args.labels, {}, num_classes), args.labels
  names, where = dataset_labels(Workdir(args.src).config)
  if names is None:
    labels = _labels(None, checkpoint.provenance, num_classes)
    return (labels, "the imported HF classifier") if labels else (None, where)
  if len(names) > num_classes:
    raise ConversionError("id2label", [f"{where} are {len(names)}, more than the model's {num_classes} classes"])
  # classes beyond the dataset's never had an example
  names += [f"LABEL_{i}" for i in range(len(names), num_classes)]
  return dict(enumerate(names)), where


def export_checkpoint(target: str, checkpoint, dst: str, args) -> list[str]:
  """`jaxspeech convert ast --to hf`: writes config.json, model.safetensors and preprocessor_config.json (the
  `ASTFeatureExtractor` of the run's fbank) into `dst`; lines to print.

  A classifier run becomes `ASTForAudioClassification`; an SSAST pretraining run its encoder as `ASTModel`
  (HF has no SSAST heads: `mask_embed`, `cpred` and `gpred` are left out, and the output says so). A BitFit
  run is a plain AST and a LoRA run becomes one with its updates merged; other PETL runs are refused.
  """
  _check_flags(args, f"to {target}")
  model = dict(checkpoint.model)
  params = checkpoint.params
  petl = adapters.from_config(model.pop("adapter", None))
  if petl is not None:  # a PETL run exports as the plain AST it amounts to, where there is one
    try:
      params = mapping.flatten(adapters.base_params(mapping.unflatten(params), petl))
    except ValueError as e:
      raise ConversionError(f"workdir model {checkpoint.model}", [str(e)]) from e
  task = model.get("task", "classify")
  fields = {f.name for f in dataclasses.fields(ASTConfig)}
  unknown = sorted(model.keys() - fields - FAMILY_FIELDS.keys())
  cfg = ASTConfig(**{k: v for k, v in model.items() if k in fields})
  problems = [f"model.{k}={model[k]!r} is not a field this converter knows" for k in unknown]
  if cfg.time_patch and cfg.time_patch != cfg.patch:
    problems.append(f"non-square patches {cfg.patch_shape}: HF's ASTConfig.patch_size is one int")
  if task == "classify" and cfg.pool != "cls":
    problems.append(f"model.pool={cfg.pool!r}: HF's classifier reads the mean of the cls and distillation tokens")
  if problems:
    raise ConversionError(f"workdir model {model}", problems)
  generation = args.generation or installed_generation()
  lines = []
  if task == "ssast":
    encoder_cfg = dataclasses.replace(cfg, num_classes=0)
    params = {k.removeprefix("encoder."): v for k, v in params.items() if k.startswith("encoder.")}
    left_out = sorted({k.split(".")[0] for k in checkpoint.params if not k.startswith("encoder.")})
    state_dict = mapping.to_hf(params, tables(encoder_cfg)[f"ASTModel (transformers {generation})"],
                               param_shapes(encoder_cfg), f"SSAST encoder params for {encoder_cfg}")
    hf_config = ast_to_hf_config(dataclasses.replace(cfg, num_classes=2))  # HF's default; ASTModel has no head
    hf_config.architectures = ["ASTModel"]
    lines.append(f"ASTModel: the SSAST encoder; left out (HF has no SSAST heads): {', '.join(left_out)}")
  else:
    state_dict = to_hf_state_dict(mapping.unflatten(params), cfg, generation)
    hf_config = ast_to_hf_config(cfg)
    hf_config.architectures = ["ASTForAudioClassification"]
    labels, where = export_labels(args, checkpoint, cfg.num_classes)
    if labels:
      hf_config.id2label, hf_config.label2id = labels, {v: k for k, v in labels.items()}
    lines.append(f"ASTForAudioClassification, {cfg.num_classes} labels"
                 + (f" from {where}" if labels else f" (LABEL_i: {where}; name them with --labels)"))
  extractor = preprocessor_config(feature_settings(cfg))
  hf_config.save_pretrained(dst)
  with open(os.path.join(dst, "preprocessor_config.json"), "w") as f:
    json.dump(extractor, f, indent=2)
  lines.append(f"preprocessor_config.json: ASTFeatureExtractor, {extractor['sampling_rate']} Hz, "
               f"{extractor['num_mel_bins']} mel bins, {extractor['max_length']} frames")
  safetensors.numpy.save_file(state_dict, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  lines.append(f"{len(state_dict)} tensors in transformers {generation} names")
  return lines
