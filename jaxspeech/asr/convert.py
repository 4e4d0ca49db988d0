"""FastConformer CTC checkpoints: HF `ParakeetForCTC` directories in and out of jaxspeech workdirs.

    jaxspeech convert asr --from hf --src HF_DIR --dst WORKDIR [--remat] [--dtype bfloat16]
    jaxspeech convert asr --to hf --src WORKDIR --dst HF_DIR

Import reads config.json and model.safetensors (or the shards of model.safetensors.index.json), and copies
the tokenizer files into the workdir; export writes the two files that `transformers.ParakeetForCTC.from_pretrained`
loads, and the workdir's tokenizer with processor_config.json (`jaxspeech.asr.hf_tokenizer`).
A workdir holds params only, so the BatchNorm running statistics do not travel through it: import leaves
them out (and says so), export writes the ones the workdir's params carry, else torch's initial 0 and 1.

The table maps every `nnx.Param` and `nnx.BatchStat` (the conv modules' running mean and variance) to its HF
key. torch's k=1 Conv1d weights (O, I, 1) are our linear kernels (I, O); the GLU conv's 2D output rows (value
half, then gate half) are our (D, 2, D) kernel; the subsampling's linear reads (channel, frequency) features
channel-major, our (F, C, D) kernel frequency-major. `num_batches_tracked` (used by torch only when
BatchNorm's momentum is None, never here) is dropped on import and written as 0 on export.
"""

import dataclasses
import json
import os

import numpy as np
import safetensors.numpy
from flax import nnx

from jaxspeech.asr import hf_tokenizer
from jaxspeech.asr.model import ASRConfig, FastConformerCTC
from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import (CONV1D, CONV2D, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, ConversionError, Rule,
                                       Transform)
from jaxspeech.convert.workdir import Imported

SOURCES = {"hf": "an HF ParakeetForCTC directory (config.json + model.safetensors or a sharded index, and its "
                 "tokenizer.json when it has one)"}
TARGETS = {"hf": "an HF directory for transformers.ParakeetForCTC.from_pretrained (config.json + model.safetensors) "
                 "and AutoProcessor (the workdir's tokenizer)"}

BATCHES_TRACKED = "num_batches_tracked"
OURS_ONLY = ("vocab_size", "dtype", "remat")   # ASRConfig fields that are not ParakeetEncoderConfig's
ENCODER_FIELDS = tuple(f.name for f in dataclasses.fields(ASRConfig) if f.name not in OURS_ONLY)


def pointwise_to_torch(kernel_IxO: np.ndarray) -> np.ndarray:
  """A linear kernel (I, O) as a torch `Conv1d(kernel_size=1)` weight (O, I, 1)."""
  return kernel_IxO.T[:, :, None]


def pointwise_from_torch(weight_OxIx1: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return weight_OxIx1[:, :, 0].T


def glu_to_torch(kernel_Dx2xD: np.ndarray) -> np.ndarray:
  """The GLU conv's kernel (D, 2, D) as its torch weight (2D, D, 1): value rows, then gate rows."""
  return mapping.heads_in_to_hf(kernel_Dx2xD)[:, :, None]


def glu_from_torch(weight_2DxDx1: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return mapping.heads_in_from_hf(weight_2DxDx1[:, :, 0], shape)


def subsampling_out_to_torch(kernel_FxCxD: np.ndarray) -> np.ndarray:
  """The subsampling's linear kernel (F, C, D) as torch's weight (D, C·F), channel-major columns."""
  return kernel_FxCxD.transpose(2, 1, 0).reshape(kernel_FxCxD.shape[2], -1)


def subsampling_out_from_torch(weight_DxCF: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  f, c, d = shape
  return weight_DxCF.reshape(d, c, f).transpose(2, 1, 0)


POINTWISE = Transform(pointwise_to_torch, pointwise_from_torch)
GLU = Transform(glu_to_torch, glu_from_torch)
SUBSAMPLING_OUT = Transform(subsampling_out_to_torch, subsampling_out_from_torch)


def _pair(ours: str, hf: str, weight: Transform, bias: Transform | None = mapping.SAME) -> list[Rule]:
  """The rules of a layer's weight and, when `bias` is a transform, its bias."""
  return [Rule(f"{ours}.kernel", f"{hf}.weight", weight)] + ([] if bias is None else
                                                           [Rule(f"{ours}.bias", f"{hf}.bias", bias)])


def _norm(ours: str, hf: str) -> list[Rule]:
  return [Rule(f"{ours}.scale", f"{hf}.weight"), Rule(f"{ours}.bias", f"{hf}.bias")]


def rules(cfg: ASRConfig) -> list[Rule]:
  """Our path <-> HF key; `{i}` is a conformer block's index."""
  bias = mapping.SAME if cfg.attention_bias else None
  heads_bias = HEADS_BIAS if cfg.attention_bias else None
  conv_bias = mapping.SAME if cfg.convolution_bias else None
  out = _pair("subsampling.first", "encoder.subsampling.layers.0", CONV2D)
  for i in range(cfg.strided_convs - 1):  # torch's Sequential: conv, ReLU, then (depthwise, pointwise, ReLU)s
    out += _pair(f"subsampling.depthwise.{i}", f"encoder.subsampling.layers.{2 + 3 * i}", CONV2D)
    out += _pair(f"subsampling.pointwise.{i}", f"encoder.subsampling.layers.{3 + 3 * i}", CONV2D)
  out += _pair("subsampling.out", "encoder.subsampling.linear", SUBSAMPLING_OUT)
  ours, hf = "blocks.{i}", "encoder.layers.{i}"
  for name, hf_name in (("ff1", "feed_forward1"), ("ff2", "feed_forward2")):
    out += _pair(f"{ours}.{name}.fc1", f"{hf}.{hf_name}.linear1", LINEAR, bias)
    out += _pair(f"{ours}.{name}.fc2", f"{hf}.{hf_name}.linear2", LINEAR, bias)
  for name in "qkv":
    out += _pair(f"{ours}.attn.{name}", f"{hf}.self_attn.{name}_proj", HEADS_IN, heads_bias)
  out += _pair(f"{ours}.attn.o", f"{hf}.self_attn.o_proj", HEADS_OUT, bias)
  out += _pair(f"{ours}.attn.pos", f"{hf}.self_attn.relative_k_proj", HEADS_IN, None)
  out += [Rule(f"{ours}.attn.bias_u", f"{hf}.self_attn.bias_u"), Rule(f"{ours}.attn.bias_v", f"{hf}.self_attn.bias_v")]
  out += _pair(f"{ours}.conv.pointwise1", f"{hf}.conv.pointwise_conv1", GLU,
               HEADS_BIAS if cfg.convolution_bias else None)
  out += [Rule(f"{ours}.conv.depthwise", f"{hf}.conv.depthwise_conv.weight", CONV1D)]
  out += [Rule(f"{ours}.conv.depthwise_bias", f"{hf}.conv.depthwise_conv.bias")] if cfg.convolution_bias else []
  out += _norm(f"{ours}.conv.norm", f"{hf}.conv.norm")
  out += [Rule(f"{ours}.conv.norm.mean", f"{hf}.conv.norm.running_mean"),
          Rule(f"{ours}.conv.norm.var", f"{hf}.conv.norm.running_var")]
  out += _pair(f"{ours}.conv.pointwise2", f"{hf}.conv.pointwise_conv2", POINTWISE, conv_bias)
  for name, hf_name in (("norm_ff1", "norm_feed_forward1"), ("norm_attn", "norm_self_att"), ("norm_conv", "norm_conv"),
                        ("norm_ff2", "norm_feed_forward2"), ("norm_out", "norm_out")):
    out += _norm(f"{ours}.{name}", f"{hf}.{hf_name}")
  return out + _pair("ctc_head", "ctc_head", POINTWISE)


def table(cfg: ASRConfig) -> mapping.Table:
  """HF key -> (our dotted path, transform) for `cfg`."""
  return mapping.expand(rules(cfg), cfg.num_hidden_layers)


def variable_shapes(cfg: ASRConfig) -> dict[str, tuple[int, ...]]:
  """Dotted path -> shape of every param and BatchNorm statistic of `FastConformerCTC(cfg)`."""
  model = nnx.eval_shape(lambda: FastConformerCTC(cfg, rngs=nnx.Rngs(0)))
  return mapping.param_shapes(nnx.state(model, (nnx.Param, nnx.BatchStat)))


def batch_stat_paths(cfg: ASRConfig) -> list[str]:
  """Our dotted paths of the BatchNorm running statistics (model variables, not params)."""
  model = nnx.eval_shape(lambda: FastConformerCTC(cfg, rngs=nnx.Rngs(0)))
  return sorted(mapping.param_shapes(nnx.state(model, nnx.BatchStat)))


def from_torch(state_dict, cfg: ASRConfig, what: str = "ParakeetForCTC state dict") -> dict[str, np.ndarray]:
  """Our dotted path -> float32 array (params and BatchNorm statistics) of a `ParakeetForCTC` state dict.

  Missing, unexpected and misshaped keys raise one ConversionError listing them all.
  """
  state_dict = {k: v for k, v in state_dict.items() if not k.endswith(f".{BATCHES_TRACKED}")}
  return mapping.from_hf(state_dict, table(cfg), variable_shapes(cfg), f"{what} for {cfg}")


def to_torch(params, cfg: ASRConfig) -> dict[str, np.ndarray]:
  """A `ParakeetForCTC` state dict (float32 numpy, int64 `num_batches_tracked`) of our dotted-path variables."""
  state_dict = mapping.to_hf(params, table(cfg), variable_shapes(cfg), f"FastConformerCTC variables for {cfg}")
  tracked = {key.removesuffix("running_mean") + BATCHES_TRACKED: np.zeros((), np.int64)
             for key in state_dict if key.endswith(".running_mean")}
  return {**state_dict, **tracked}


def config_from_hf(raw: dict, **overrides) -> ASRConfig:
  """Our config of a `ParakeetForCTC` config.json dict (`overrides`: dtype, remat); an encoder field it lacks
  takes HF's default, which is ours. Settings our model does not implement are a ConversionError."""
  encoder = raw.get("encoder_config") or {}
  heads = encoder.get("num_attention_heads", ASRConfig.num_attention_heads)
  vocab = raw.get("vocab_size", ASRConfig.vocab_size)
  checks = (
      (f"model_type={raw.get('model_type')!r} (not 'parakeet_ctc')", raw.get("model_type") == "parakeet_ctc"),
      (f"pad_token_id={raw.get('pad_token_id')} is not the blank's vocab_size - 1 = {vocab - 1}",
       raw.get("pad_token_id", vocab - 1) == vocab - 1),
      (f"num_key_value_heads={encoder.get('num_key_value_heads')} != num_attention_heads={heads}",
       encoder.get("num_key_value_heads", heads) == heads),
  )
  problems = [message for message, ok in checks if not ok]
  if problems:
    raise ConversionError("HF config", problems)
  cfg = ASRConfig(**{k: encoder[k] for k in ENCODER_FIELDS if k in encoder}, vocab_size=vocab, **overrides)
  try:
    cfg.validate()
  except ValueError as e:
    raise ConversionError("HF config", [str(e)]) from None
  return cfg


def hf_config(cfg: ASRConfig) -> dict:
  """config.json of `cfg` for `ParakeetForCTC`, which has no streaming settings: a model with any refused."""
  offline = ASRConfig()
  streaming = [f"model.{name}={getattr(cfg, name)} (ParakeetForCTC has only {getattr(offline, name)})"
               for name in ("att_context_left", "att_context_right", "conv_context_right", "causal_downsampling",
                            "normalize_features") if getattr(cfg, name) != getattr(offline, name)]
  if streaming:
    raise ConversionError("a streaming asr model", streaming)
  encoder = {"model_type": "parakeet_encoder", **{k: getattr(cfg, k) for k in ENCODER_FIELDS},
             "num_key_value_heads": cfg.num_attention_heads, "initializer_range": 0.02}
  return {"architectures": ["ParakeetForCTC"], "model_type": "parakeet_ctc", "vocab_size": cfg.vocab_size,
          "pad_token_id": cfg.blank_id, "ctc_loss_reduction": "mean", "ctc_zero_infinity": True,
          "encoder_config": encoder, "dtype": "float32"}


# ------------------------------------------------------------------------------- `jaxspeech convert asr`

def add_arguments(parser) -> None:
  g = parser.add_argument_group("import (--from hf)")
  g.add_argument("--remat", action="store_true", help="rematerialise each conformer block in training")
  g.add_argument("--dtype", default="float32", help="compute dtype in the workdir's model config (params float32)")


def import_checkpoint(source: str, src: str, args) -> Imported:
  """`jaxspeech convert asr --from hf`: the params and BatchNorm statistics of a ParakeetForCTC directory, and its
  tokenizer files."""
  config_path = os.path.join(src, "config.json")
  if not os.path.isfile(config_path):
    raise ConversionError(f"HF directory {src}", ["has no config.json"])
  raw = mapping.read_json(config_path)
  cfg = config_from_hf(raw, remat=args.remat, dtype=args.dtype)
  state_dict, filename = mapping.read_hf_weights(src)
  variables = from_torch(state_dict, cfg, f"{src}/{filename}")
  stats = set(batch_stat_paths(cfg))
  files, notes = hf_tokenizer.read(src, cfg)
  return Imported(model=dataclasses.asdict(cfg), params={k: v for k, v in variables.items() if k not in stats},
                  rest={k: v for k, v in variables.items() if k in stats},
                  provenance={"layout": "ParakeetForCTC", "file": filename, "hf_config": raw}, notes=notes, files=files)


def export_checkpoint(target: str, checkpoint, dst: str, args) -> list[str]:
  """`jaxspeech convert asr --to hf`: config.json, model.safetensors and the tokenizer into `dst`; lines to print."""
  fields = {f.name for f in dataclasses.fields(ASRConfig)}
  unknown = sorted(checkpoint.model.keys() - fields)
  if unknown:
    raise ConversionError(f"workdir model {checkpoint.model}",
                          [f"model.{k} is not an ASRConfig field" for k in unknown])
  cfg = ASRConfig(**checkpoint.model)
  variables = {**checkpoint.params, **checkpoint.rest}
  state_dict = to_torch(variables, cfg)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(hf_config(cfg), f, indent=2)
  safetensors.numpy.save_file(state_dict, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  return [f"ParakeetForCTC, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size} "
          f"(blank {cfg.blank_id})", f"{len(state_dict)} tensors in model.safetensors (BatchNorm statistics included)",
          *hf_tokenizer.write(args.src, cfg, dst)]
