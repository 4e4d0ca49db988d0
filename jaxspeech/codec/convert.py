"""X-codec2 checkpoints (the `xcodec2` package's module names) in and out of codec workdirs; `hf`, transformers'
own Xcodec2Model, is `jaxspeech.codec.hf`'s layout, dispatched here.

    jaxspeech convert codec --from xcodec2 --src CKPT --dst WORKDIR [--w2vbert W2V_BERT_DIR]
    jaxspeech convert codec --to xcodec2 --src WORKDIR --dst DIR        (DIR/model.safetensors)
    jaxspeech convert codec --from hf --src HF_DIR --dst WORKDIR
    jaxspeech convert codec --to hf --src WORKDIR --dst HF_DIR          (Xcodec2Model.from_pretrained(HF_DIR))

CKPT is a safetensors file, or a directory holding `model.safetensors` (HKUSTAudio/xcodec2's release).
Keys: `CodecEnc.*` (CodecEncoder_Transformer), `generator.{quantizer,backbone,head}.*` (CodecDecoderVocos),
`fc_prior`, `fc_post_a`, and with the semantic branch `SemanticEncoder_module`, `fc_post_s`,
`SemanticDecoder_module` (the last two only in training checkpoints; the released XCodec2Model has neither,
so they keep their initialisation). `semantic_model.*` (w2v-BERT 2.0), `discriminator.*` and
`spec_discriminator.*` are not imported, and the output says so. `--w2vbert DIR` imports w2v-BERT 2.0 from a
Hugging Face `Wav2Vec2BertModel` directory (`w2vbert_convert`) as the codec's frozen `semantic_model`, so the
workdir computes its semantic features itself; an export leaves it out.

Weight-normalised convs keep g and v as params (`weight_g` (O,), `weight_v` (K, I, O)): imported from either
`parametrizations.weight.original0/1` (torch's parametrizations, what the package builds) or the older
`weight_g` / `weight_v`, exported as the former. Buffers (the anti-alias filters, the ISTFT window) are not
params: on import they are checked against the values the model computes, on export they are written.
"""

import dataclasses
import json
import os

import numpy as np
from flax import nnx
import safetensors.numpy

from jaxspeech.audio.istft import hann_window
from jaxspeech.codec import hf
from jaxspeech.codec.encoder import LOWPASS, EncoderConfig
from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import CONV1D, HEADS_IN, HEADS_OUT, LINEAR, ConversionError, Rule, Transform
from jaxspeech.codec.model import TEACHER, Codec, CodecConfig, FSQConfig, SemanticConfig
from jaxspeech.convert.workdir import Imported
from jaxspeech.teachers.w2vbert import convert as w2vbert_convert
from jaxspeech.vocoder.decoder import DecoderConfig


def gain_to_torch(g_O: np.ndarray) -> np.ndarray:
  """A weight-norm gain (O,) as torch's (O, 1, 1) (weight_norm over dim 0 of a Conv1d weight)."""
  return g_O.reshape(-1, 1, 1)


def gain_from_torch(g_Ox1x1: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return g_Ox1x1.reshape(shape)


GAIN = Transform(gain_to_torch, gain_from_torch)

# Weight-norm key suffixes: (g, v) as torch.nn.utils.parametrizations.weight_norm, and as the older weight_norm.
WEIGHT_NORM = {"parametrizations": ("parametrizations.weight.original0", "parametrizations.weight.original1"),
               "legacy": ("weight_g", "weight_v")}
XCODEC2_LEVELS = [4] * 8
NOT_IMPORTED = {"semantic_model.": "w2v-BERT 2.0 (import it from its Hugging Face directory with --w2vbert)",
                "discriminator.": "the multi-period discriminator (generator-only import)",
                "spec_discriminator.": "the STFT discriminator (generator-only import)"}


@dataclasses.dataclass(frozen=True)
class Layout:
  """A state-dict layout: rules for params, and constant buffers (key → array) that are not params."""
  rules: list[Rule]
  constants: dict[str, np.ndarray]

  def table(self) -> mapping.Table:
    return {rule.hf: (rule.ours, rule.transform) for rule in self.rules}


def _wn_conv(ours: str, theirs: str, weight_norm: str) -> list[Rule]:
  g, v = WEIGHT_NORM[weight_norm]
  return [Rule(f"{ours}.weight_g", f"{theirs}.{g}", GAIN), Rule(f"{ours}.weight_v", f"{theirs}.{v}", CONV1D),
          Rule(f"{ours}.bias", f"{theirs}.bias")]


def _layer(ours: str, theirs: str, transform: Transform, bias: bool = True, weight: str = "kernel") -> list[Rule]:
  """A torch layer's `weight` (and `bias`) as our `weight` (and `bias`)."""
  rules = [Rule(f"{ours}.{weight}", f"{theirs}.weight", transform)]
  return rules + [Rule(f"{ours}.bias", f"{theirs}.bias")] if bias else rules


def _conv(ours: str, theirs: str, bias: bool = True) -> list[Rule]:
  return _layer(ours, theirs, CONV1D, bias)


def _linear(ours: str, theirs: str, transform: Transform = LINEAR, bias: bool = True) -> list[Rule]:
  return _layer(ours, theirs, transform, bias)


def _norm(ours: str, theirs: str, bias: bool = True) -> list[Rule]:
  return _layer(ours, theirs, mapping.SAME, bias, weight="scale")


def _snake(ours: str, theirs: str, constants: dict) -> list[Rule]:
  """An anti-aliased SnakeBeta (`Activation1d`): α and β (torch's `bias`) are params, the filters buffers."""
  constants[f"{theirs}.upsample.filter"] = LOWPASS.reshape(1, 1, -1)
  constants[f"{theirs}.downsample.lowpass.filter"] = LOWPASS.reshape(1, 1, -1)
  return [Rule(f"{ours}.alpha", f"{theirs}.act.alpha"), Rule(f"{ours}.beta", f"{theirs}.act.bias")]


def _encoder(cfg, weight_norm: str, constants: dict) -> list[Rule]:
  rules = _wn_conv("encoder.conv_in", "CodecEnc.conv_blocks.0", weight_norm)
  for b in range(len(cfg.encoder.strides)):
    ours, theirs = f"encoder.blocks.{b}", f"CodecEnc.conv_blocks.{b + 1}.block"
    for u in range(len(cfg.encoder.dilations)):
      unit = f"{theirs}.{u}.block"   # Sequential(act1, conv1, act2, conv2)
      rules += _snake(f"{ours}.units.{u}.act1", f"{unit}.0", constants)
      rules += _wn_conv(f"{ours}.units.{u}.conv1", f"{unit}.1", weight_norm)
      rules += _snake(f"{ours}.units.{u}.act2", f"{unit}.2", constants)
      rules += _wn_conv(f"{ours}.units.{u}.conv2", f"{unit}.3", weight_norm)
    rules += _snake(f"{ours}.act", f"{theirs}.{len(cfg.encoder.dilations)}", constants)
    rules += _wn_conv(f"{ours}.conv", f"{theirs}.{len(cfg.encoder.dilations) + 1}", weight_norm)
  rules += _snake("encoder.act", "CodecEnc.conv_final_block.0", constants)
  return rules + _wn_conv("encoder.conv_out", "CodecEnc.conv_final_block.1", weight_norm)


def _resnet(ours: str, theirs: str) -> list[Rule]:
  return (_norm(f"{ours}.norm1", f"{theirs}.norm1") + _conv(f"{ours}.conv1", f"{theirs}.conv1")
          + _norm(f"{ours}.norm2", f"{theirs}.norm2") + _conv(f"{ours}.conv2", f"{theirs}.conv2"))


def _decoder(cfg, constants: dict) -> list[Rule]:
  """`generator.*` of CodecDecoderVocos, its quantizer included."""
  rules = _linear("quantizer.project_in", "generator.quantizer.project_in")
  rules += _linear("quantizer.project_out", "generator.quantizer.project_out")
  backbone = "generator.backbone"
  rules += _conv("decoder.embed", f"{backbone}.embed")
  for i in range(2):
    rules += _resnet(f"decoder.prior_net.{i}", f"{backbone}.prior_net.{i}")
    rules += _resnet(f"decoder.post_net.{i}", f"{backbone}.post_net.{i}")
  for i in range(cfg.decoder.depth):
    ours, theirs = f"decoder.transformers.{i}", f"{backbone}.transformers.{i}"
    rules += _norm(f"{ours}.att_norm", f"{theirs}.att_norm", bias=False)
    rules += _linear(f"{ours}.c_attn", f"{theirs}.att.c_attn", HEADS_IN, bias=False)   # rows (3, H, K)
    rules += _linear(f"{ours}.c_proj", f"{theirs}.att.c_proj", HEADS_OUT, bias=False)
    rules += _norm(f"{ours}.ffn_norm", f"{theirs}.ffn_norm", bias=False)
    rules += _linear(f"{ours}.fc1", f"{theirs}.mlp.fc1", bias=False)
    rules += _linear(f"{ours}.fc2", f"{theirs}.mlp.fc2", bias=False)
  rules += _norm("decoder.final_norm", f"{backbone}.final_layer_norm")
  constants["generator.head.istft.window"] = hann_window(cfg.decoder.n_fft)
  return rules + _linear("decoder.head.out", "generator.head.out")


def _semantic(ours: str, theirs: str) -> list[Rule]:
  return (_conv(f"{ours}.initial_conv", f"{theirs}.initial_conv", bias=False)
          + _conv(f"{ours}.conv1", f"{theirs}.residual_blocks.1") + _conv(f"{ours}.conv2", f"{theirs}.residual_blocks.3")
          + _conv(f"{ours}.final_conv", f"{theirs}.final_conv", bias=False))


def layout(cfg, weight_norm: str = "parametrizations", training: bool = True) -> Layout:
  """The xcodec2 layout of a codec `cfg` (config.model). `training=False`: the released XCodec2Model's
  keys, without `fc_post_s` and `SemanticDecoder_module`."""
  constants = {}
  rules = _encoder(cfg, weight_norm, constants) + _decoder(cfg, constants)
  rules += _linear("fc_prior", "fc_prior") + _linear("fc_post_a", "fc_post_a")
  if cfg.semantic.enabled:
    rules += _semantic("semantic_encoder", "SemanticEncoder_module")
    if training:
      rules += _linear("fc_post_s", "fc_post_s") + _semantic("semantic_decoder", "SemanticDecoder_module")
  return Layout(rules, constants)


def layouts(cfg) -> dict[str, Layout]:
  """Every layout we read for `cfg`, by name."""
  out = {}
  for weight_norm in WEIGHT_NORM:
    out[f"xcodec2 ({weight_norm} weight norm)"] = layout(cfg, weight_norm)
    if cfg.semantic.enabled:
      out[f"XCodec2Model ({weight_norm} weight norm)"] = layout(cfg, weight_norm, training=False)
  return out


def param_shapes(cfg) -> dict[str, tuple[int, ...]]:
  """The codec's params without its w2v-BERT teacher (`semantic_model`, not part of xcodec2's layout)."""
  shapes = mapping.param_shapes(nnx.state(nnx.eval_shape(lambda: Codec(cfg, rngs=nnx.Rngs(0))), nnx.Param))
  return {k: v for k, v in shapes.items() if not k.startswith(TEACHER + ".")}


def check_constants(state_dict, constants: dict[str, np.ndarray], what: str, atol: float = 1e-6) -> None:
  """Buffers must be what our model computes: a checkpoint with other filters or windows would decode differently."""
  problems = []
  for key, expected in constants.items():
    got = mapping.as_numpy(state_dict[key])
    if got.shape != expected.shape or np.abs(got - expected).max() > atol:
      problems.append(f"buffer {key}: {got.shape} differs from the computed {expected.shape} by more than {atol}")
  if problems:
    raise ConversionError(what, problems)


def from_state_dict(state_dict, cfg, what: str = "xcodec2 state dict") -> tuple[str, dict[str, np.ndarray]]:
  """(layout name, our dotted path → float32 array). `state_dict` holds exactly one layout's keys (params and
  buffers) and those of NOT_IMPORTED; anything else, and any misshaped tensor, is a ConversionError naming it."""
  state_dict = {k: v for k, v in state_dict.items() if not k.startswith(tuple(NOT_IMPORTED))}
  candidates = layouts(cfg)
  # The layout that leaves fewest keys unaccounted for either way (one may hold another's keys and more).
  name = min(candidates, key=lambda n: len(set(state_dict) ^ {*candidates[n].table(), *candidates[n].constants}))
  chosen = candidates[name]
  mapping.check_keys(state_dict, [*chosen.table(), *chosen.constants], f"{what} ({name})")
  check_constants(state_dict, chosen.constants, f"{what} ({name})")
  params = {k: v for k, v in state_dict.items() if k not in chosen.constants}
  return name, mapping.from_hf(params, chosen.table(), param_shapes(cfg), f"{what} ({name})")


def xcodec2_problems(cfg) -> list[str]:
  """Every field of `cfg` that the xcodec2 modules (CodecDecoderVocos, ResidualFSQ) hard-code otherwise."""
  out = []
  if cfg.decoder.norm_groups != hf.NORM_GROUPS:
    out.append(f"decoder.norm_groups {cfg.decoder.norm_groups}: xcodec2's GroupNorm (Normalize) has {hf.NORM_GROUPS} "
               "groups")
  if cfg.decoder.n_fft != 4 * cfg.decoder.hop:
    out.append(f"decoder.n_fft {cfg.decoder.n_fft}: CodecDecoderVocos's is 4 × hop = {4 * cfg.decoder.hop}")
  if list(cfg.fsq.levels) != XCODEC2_LEVELS:
    out.append(f"fsq.levels {list(cfg.fsq.levels)}: CodecDecoderVocos's ResidualFSQ has {XCODEC2_LEVELS}")
  if cfg.decoder.input_channels != cfg.decoder.dim:
    out.append(f"decoder.input_channels {cfg.decoder.input_channels} != decoder.dim {cfg.decoder.dim}: "
               "VocosBackbone's embed keeps its width")
  return out


def to_state_dict(params: dict[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
  """The xcodec2 state dict (parametrizations weight norm, buffers included) of our dotted-path params."""
  problems = xcodec2_problems(cfg)
  if problems:
    raise ConversionError("codec config (the xcodec2 modules cannot represent it)", problems)
  chosen = layout(cfg)
  state_dict = mapping.to_hf(params, chosen.table(), param_shapes(cfg), f"codec params for {cfg}")
  return {**state_dict, **chosen.constants}


# ----------------------------------------------------------------------------- `jaxspeech convert codec`

SOURCES = {"xcodec2": "an xcodec2 checkpoint: a .safetensors file, or a directory with model.safetensors "
                      "(HKUSTAudio/xcodec2, or a training checkpoint's state dict saved as safetensors)",
           "hf": "a transformers Xcodec2Model directory (config.json, model.safetensors), as save_pretrained writes it"}
TARGETS = {"xcodec2": "a directory with model.safetensors in the xcodec2 package's key names and config.json",
           "hf": "a transformers Xcodec2Model directory: Xcodec2Model.from_pretrained(DIR) loads it"}


def add_arguments(parser) -> None:
  g = parser.add_argument_group("xcodec2 import (what the weights' shapes do not say)")
  g.add_argument("--heads", type=int, default=16, help="decoder attention heads (default 16, the release's)")
  g.add_argument("--dilations", default="1,3,9", help="encoder residual-unit dilations (default 1,3,9)")
  g.add_argument("--levels", default="4,4,4,4,4,4,4,4", help="FSQ levels (default [4]*8: 65,536 codes)")
  g = parser.add_argument_group("w2v-BERT 2.0, the semantic branch's frozen teacher")
  g.add_argument("--w2vbert", metavar="DIR", default=None,
                 help="also import w2v-BERT 2.0 (a Hugging Face Wav2Vec2BertModel directory: config.json and "
                      "*.safetensors, e.g. facebook/w2v-bert-2.0): the workdir's codec computes its semantic features")
  g.add_argument("--w2vbert-layers", type=int, default=16,
                 help="w2v-BERT layers to run: the semantic features are hidden_states[N] (X-codec2: 16)")


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def _wn_v(state_dict, prefix: str):
  for _, v in WEIGHT_NORM.values():
    if f"{prefix}.{v}" in state_dict:
      return state_dict[f"{prefix}.{v}"]
  raise ConversionError("xcodec2 checkpoint", [f"missing key {prefix}.{WEIGHT_NORM['parametrizations'][1]} "
                                               f"(or {prefix}.weight_v): is it an xcodec2 checkpoint?"])


def _indices(state_dict, prefix: str) -> list[int]:
  """The distinct integers right after `prefix` in the keys (e.g. the layers of a Sequential)."""
  return sorted({int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)})


def config_from_state_dict(state_dict, args):
  """Our `config.model` for an xcodec2 state dict: its shapes give the sizes, `args` the rest."""
  needed = ("generator.quantizer.project_in.weight", "generator.backbone.embed.weight", "generator.head.out.weight")
  missing = [k for k in needed if k not in state_dict]
  if missing:
    raise ConversionError("xcodec2 checkpoint", [f"missing key {k}" for k in missing] + [
        f"(its first keys are {sorted(state_dict)[:4]}; is it an xcodec2 checkpoint?)"])
  dilations, levels = _ints(args.dilations), _ints(args.levels)
  blocks = _indices(state_dict, "CodecEnc.conv_blocks.")[1:]
  units = len(_indices(state_dict, "CodecEnc.conv_blocks.1.block.")) - 2
  strides = [_wn_v(state_dict, f"CodecEnc.conv_blocks.{b}.block.{units + 1}").shape[-1] // 2 for b in blocks]
  semantic = state_dict.get("SemanticEncoder_module.initial_conv.weight")
  project_in = state_dict["generator.quantizer.project_in.weight"]
  embed = state_dict["generator.backbone.embed.weight"]
  cfg = CodecConfig(
      encoder=EncoderConfig(channels=int(_wn_v(state_dict, "CodecEnc.conv_blocks.0").shape[0]), strides=strides,
                            dilations=dilations, dim=int(_wn_v(state_dict, "CodecEnc.conv_final_block.1").shape[0])),
      semantic=(SemanticConfig(enabled=False) if semantic is None else
                SemanticConfig(features=int(semantic.shape[1]), dim=int(semantic.shape[0]))),
      fsq=FSQConfig(levels=levels, dim=int(project_in.shape[1])),
      decoder=DecoderConfig(input_channels=int(embed.shape[1]), dim=int(embed.shape[0]), heads=args.heads,
                            depth=len(_indices(state_dict, "generator.backbone.transformers.")),
                            n_fft=int(state_dict["generator.head.out.weight"].shape[0]) - 2, hop=int(np.prod(strides)),
                            norm_groups=hf.NORM_GROUPS))  # xcodec2's Normalize hard-codes it
  problems = []
  if units != len(dilations):
    problems.append(f"the encoder blocks have {units} residual units; --dilations gives {len(dilations)}")
  if project_in.shape[0] != len(levels):
    problems.append(f"the FSQ has {project_in.shape[0]} dims; --levels gives {len(levels)}")
  if cfg.decoder.dim % args.heads:
    problems.append(f"--heads {args.heads} does not divide the decoder width {cfg.decoder.dim}")
  if problems:
    raise ConversionError("xcodec2 checkpoint", problems)
  return cfg


def _read_safetensors(src: str) -> tuple[dict, str]:
  path = os.path.join(src, "model.safetensors") if os.path.isdir(src) else src
  if not os.path.isfile(path):
    raise ConversionError(f"xcodec2 checkpoint {src}", ["is neither a .safetensors file nor a directory holding "
                                                        "model.safetensors"])
  try:
    return dict(safetensors.numpy.load_file(path)), path
  except Exception as e:  # pylint: disable=broad-except  (safetensors' errors for a torch pickle, a torn file)
    raise ConversionError(f"cannot read {path}", [
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        "(a torch .ckpt: save its state dict with safetensors.torch.save_file(ckpt['state_dict'], ...) first)"]
    ) from None


def import_checkpoint(source: str, src: str, args):
  """`jaxspeech convert codec --from xcodec2|hf`: a `jaxspeech.convert.workdir.Imported`."""
  if source == "hf":
    return _import_hf(src)
  state_dict, path = _read_safetensors(src)
  config_path = os.path.join(os.path.dirname(path), "config.json")
  saved = {}
  if os.path.isfile(config_path):
    with open(config_path) as f:
      saved = json.load(f)
  if "jaxspeech_model" in saved:   # our own export: its exact config, flags or not
    cfg = CodecConfig(**saved["jaxspeech_model"])
  else:
    cfg = config_from_state_dict(state_dict, args)
  name, params = from_state_dict(state_dict, cfg, f"xcodec2 checkpoint {path}")
  skipped = {prefix: why for prefix, why in NOT_IMPORTED.items() if any(k.startswith(prefix) for k in state_dict)}
  if args.w2vbert:
    cfg, teacher = _import_w2vbert(cfg, args.w2vbert, args.w2vbert_layers)
    params.update(teacher)
    skipped.pop("semantic_model.", None)
  notes = [f"not imported: {prefix}* ({why})" for prefix, why in skipped.items()]
  if name.startswith("XCodec2Model"):
    notes.append("XCodec2Model has no fc_post_s or SemanticDecoder_module: they start from their initialisation")
  provenance = {"layout": name, "file": os.path.basename(path), "not_imported": sorted(skipped),
                **({"w2vbert": os.path.abspath(args.w2vbert)} if args.w2vbert else {})}
  return Imported(model=dataclasses.asdict(cfg), params=params, provenance=provenance, notes=notes)


def _import_w2vbert(cfg: CodecConfig, src: str, layers: int) -> tuple[CodecConfig, dict[str, np.ndarray]]:
  """(`cfg` with `semantic.w2vbert` from the HF directory `src`, its params under the codec's `semantic_model.`)."""
  if not cfg.semantic.enabled:
    raise ConversionError("--w2vbert", ["this checkpoint has no semantic branch (SemanticEncoder_module)"])
  w2vbert, params = w2vbert_convert.read(src, layers, ours=TEACHER + ".")
  if w2vbert.dim != cfg.semantic.features:
    raise ConversionError("--w2vbert", [f"{src} is {w2vbert.dim} wide; the SemanticEncoder takes "
                                        f"{cfg.semantic.features} features"])
  return dataclasses.replace(cfg, semantic=dataclasses.replace(cfg.semantic, w2vbert=w2vbert)), params


def _import_hf(src: str):
  config_path = os.path.join(src, "config.json")
  if not os.path.isfile(config_path):
    raise ConversionError(f"Xcodec2Model directory {src}", ["has no config.json"])
  hf_config = mapping.read_json(config_path)
  if hf_config.get("model_type") != "xcodec2":
    raise ConversionError(config_path, [f"model_type {hf_config.get('model_type')!r}, not 'xcodec2'"])
  cfg = hf.config_from_hf(hf_config)
  state_dict, name = mapping.read_hf_weights(src)
  params = hf.from_state_dict(state_dict, cfg, f"Xcodec2Model checkpoint {src}")
  notes = ["Xcodec2Model has no fc_post_s or SemanticDecoder_module: they start from their initialisation"]
  return Imported(model=dataclasses.asdict(cfg), params=params, provenance={"layout": "Xcodec2Model (transformers)",
                                                                   "file": name}, notes=notes)


def _export_hf(checkpoint, dst: str) -> list[str]:
  """`--to hf`: config.json (Xcodec2Config) and model.safetensors, w2v-BERT included, in `dst`."""
  cfg = CodecConfig(**checkpoint.model)
  config = hf.hf_config(cfg)
  ours = hf.param_shapes(cfg)
  left_out = sorted({k.split(".")[0] for k in checkpoint.params if k not in ours or k.startswith(hf.NOT_EXPORTED)})
  state_dict = hf.to_state_dict({k: v for k, v in checkpoint.params.items() if k in ours}, cfg)
  safetensors.numpy.save_file(state_dict, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  lines = [f"{len(state_dict)} tensors in Xcodec2Model names (weight norm folded into the encoder's convs)"]
  if left_out:
    lines.append(f"left out (Xcodec2Model has no such part): {', '.join(left_out)}")
  return lines


def export_checkpoint(target: str, checkpoint, dst: str, args) -> list[str]:
  """`jaxspeech convert codec --to xcodec2|hf`: model.safetensors and config.json in `dst`; lines to print."""
  del args
  if target == "hf":
    return _export_hf(checkpoint, dst)
  cfg = CodecConfig(**checkpoint.model)
  # w2v-BERT left out: a re-import takes it with --w2vbert again
  cfg = dataclasses.replace(cfg, semantic=dataclasses.replace(cfg.semantic, w2vbert=None))
  ours = param_shapes(cfg)
  left_out = sorted({k.split(".")[0] for k in checkpoint.params if k not in ours})
  state_dict = to_state_dict({k: v for k, v in checkpoint.params.items() if k in ours}, cfg)
  safetensors.numpy.save_file(state_dict, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  # BigCodecConfig's fields, for XCodec2Model.from_pretrained; the full model config for a re-import.
  config = {"model_type": "xcodec", "architectures": ["XCodec2Model"], "use_vocos": True,
            "semantic_hidden_size": cfg.semantic.dim, "codec_encoder_hidden_size": cfg.encoder.dim,
            "codec_decoder_hidden_size": cfg.decoder.dim, "jaxspeech_model": dataclasses.asdict(cfg)}
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  lines = [f"{len(state_dict)} tensors in xcodec2 names (parametrizations weight norm, buffers included)"]
  if left_out:
    lines.append(f"left out (not the codec's generator): {', '.join(left_out)}")
  if not cfg.semantic.enabled:
    lines.append("acoustic only: no SemanticEncoder_module, so XCodec2Model (which always has one) cannot load it")
  return lines
