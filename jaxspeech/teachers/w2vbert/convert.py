"""transformers' `Wav2Vec2BertModel` state dict (facebook/w2v-bert-2.0) → `jaxspeech.teachers.w2vbert.model.W2VBert` params.

Only the first `cfg.layers` conformer layers are read (X-codec2 uses hidden_states[16] of 24); the later layers,
`masked_spec_embed` (SpecAugment's mask vector, training only) and what runs after the encoder (`adapter`,
`intermediate_ffn`, if the model has them) are skipped. The codec holds the encoder as
`semantic_model` (X-codec2's attribute name), so an xcodec2 training checkpoint's `semantic_model.*` keys are
this layout under that prefix.
"""

import json
import os

from flax import nnx
import numpy as np
import safetensors.numpy

from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import CONV1D, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, SAME, ConversionError, Rule, Transform
from jaxspeech.teachers.w2vbert.model import W2VBert, W2VBertConfig


def pointwise_to_hf(kernel_IxO: np.ndarray) -> np.ndarray:
  """A (in, out) kernel as a torch 1×1 `Conv1d` weight (out, in, 1)."""
  return kernel_IxO.T[:, :, None]


def pointwise_from_hf(weight_OxIx1: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return weight_OxIx1[:, :, 0].T


POINTWISE = Transform(pointwise_to_hf, pointwise_from_hf)
SKIPPED = ("masked_spec_embed", "adapter.", "intermediate_ffn.")   # key prefixes no hidden state depends on


def _layer(ours: str, theirs: str, transform: Transform = LINEAR, bias: bool = True) -> list[Rule]:
  rules = [Rule(f"{ours}.kernel", f"{theirs}.weight", transform)]
  if bias:
    rules.append(Rule(f"{ours}.bias", f"{theirs}.bias", HEADS_BIAS if transform is HEADS_IN else SAME))
  return rules


def _norm(ours: str, theirs: str) -> list[Rule]:
  return [Rule(f"{ours}.scale", f"{theirs}.weight"), Rule(f"{ours}.bias", f"{theirs}.bias")]


def rules(cfg: W2VBertConfig) -> list[Rule]:
  """Our paths (under W2VBert) ↔ HF `Wav2Vec2BertModel` keys; `{i}` is a conformer layer."""
  out = _norm("feature_projection.layer_norm", "feature_projection.layer_norm")
  out += _layer("feature_projection.projection", "feature_projection.projection")
  ours, theirs = "layers.{i}", "encoder.layers.{i}"
  for ffn in ("ffn1", "ffn2"):
    out += _norm(f"{ours}.{ffn}_layer_norm", f"{theirs}.{ffn}_layer_norm")
    out += _layer(f"{ours}.{ffn}.intermediate_dense", f"{theirs}.{ffn}.intermediate_dense")
    out += _layer(f"{ours}.{ffn}.output_dense", f"{theirs}.{ffn}.output_dense")
  out += _norm(f"{ours}.self_attn_layer_norm", f"{theirs}.self_attn_layer_norm")
  for proj in ("linear_q", "linear_k", "linear_v"):
    out += _layer(f"{ours}.self_attn.{proj}", f"{theirs}.self_attn.{proj}", HEADS_IN)
  out += _layer(f"{ours}.self_attn.linear_out", f"{theirs}.self_attn.linear_out", HEADS_OUT)
  if cfg.position == "relative_key":
    out.append(Rule(f"{ours}.self_attn.distance_embedding", f"{theirs}.self_attn.distance_embedding.weight"))
  conv = f"{theirs}.conv_module"
  out += _norm(f"{ours}.conv_module.layer_norm", f"{conv}.layer_norm")
  out += _layer(f"{ours}.conv_module.pointwise_conv1", f"{conv}.pointwise_conv1", POINTWISE, bias=False)
  out.append(Rule(f"{ours}.conv_module.depthwise_conv", f"{conv}.depthwise_conv.weight", CONV1D))
  out += _norm(f"{ours}.conv_module.depthwise_layer_norm", f"{conv}.depthwise_layer_norm")
  out += _layer(f"{ours}.conv_module.pointwise_conv2", f"{conv}.pointwise_conv2", POINTWISE, bias=False)
  return out + _norm(f"{ours}.final_layer_norm", f"{theirs}.final_layer_norm")


def table(cfg: W2VBertConfig, ours: str = "", theirs: str = "") -> mapping.Table:
  """HF key (prefixed by `theirs`) → our dotted path (prefixed by `ours`), for cfg.layers layers."""
  expanded = mapping.expand(rules(cfg), cfg.layers)
  return {theirs + key: (ours + path, transform) for key, (path, transform) in expanded.items()}


def param_shapes(cfg: W2VBertConfig, ours: str = "") -> dict[str, tuple[int, ...]]:
  shapes = mapping.param_shapes(nnx.state(nnx.eval_shape(lambda: W2VBert(cfg, rngs=nnx.Rngs(0))), nnx.Param))
  return {ours + k: v for k, v in shapes.items()}


def unused(key: str, cfg: W2VBertConfig, theirs: str = "") -> bool:
  """A key this import skips on purpose: a layer past cfg.layers, or one of SKIPPED."""
  key = key[len(theirs):]
  if key.startswith(SKIPPED):
    return True
  parts = key.split(".")
  return parts[:2] == ["encoder", "layers"] and parts[2].isdigit() and int(parts[2]) >= cfg.layers


def from_state_dict(state_dict, cfg: W2VBertConfig, ours: str = "", theirs: str = "",
                    what: str = "Wav2Vec2BertModel state dict") -> dict[str, np.ndarray]:
  """Our dotted path (prefixed by `ours`) → float32 array of the `theirs`-prefixed keys of `state_dict`."""
  kept = {k: v for k, v in state_dict.items() if k.startswith(theirs) and not unused(k, cfg, theirs)}
  return mapping.from_hf(kept, table(cfg, ours, theirs), param_shapes(cfg, ours), what)


def config_from_hf(hf: dict, layers: int = 16) -> W2VBertConfig:
  """Our encoder config of a HF `Wav2Vec2BertConfig` (config.json as a dict), running its first `layers` layers."""
  problems = []
  if hf.get("hidden_act", "swish") not in ("swish", "silu"):
    problems.append(f"hidden_act {hf['hidden_act']!r}: only swish is implemented")
  if hf.get("position_embeddings_type", "relative_key") not in ("relative_key", "rotary", None):
    problems.append(f"position_embeddings_type {hf['position_embeddings_type']!r}: relative_key, rotary or none")
  if hf.get("num_hidden_layers", 24) < layers:
    problems.append(f"{layers} layers asked, the model has {hf['num_hidden_layers']}")
  if problems:
    raise ConversionError("Wav2Vec2BertConfig", problems)
  return W2VBertConfig(input_dim=hf.get("feature_projection_input_dim", 160), dim=hf.get("hidden_size", 1024),
                       layers=layers, heads=hf.get("num_attention_heads", 16), intermediate=hf.get("intermediate_size", 4096),
                       conv_kernel=hf.get("conv_depthwise_kernel_size", 31),
                       position=hf.get("position_embeddings_type", "relative_key"),
                       left_max=hf.get("left_max_position_embeddings", 64),
                       right_max=hf.get("right_max_position_embeddings", 8),
                       rotary_base=hf.get("rotary_embedding_base", 10000), eps=hf.get("layer_norm_eps", 1e-5))


def read(src: str, layers: int = 16, ours: str = "") -> tuple[W2VBertConfig, dict[str, np.ndarray]]:
  """(encoder config, params) of a HF `Wav2Vec2BertModel` directory (config.json and *.safetensors, as
  `save_pretrained` or the hub's facebook/w2v-bert-2.0 holds them)."""
  config_path = os.path.join(src, "config.json")
  files = sorted(f for f in os.listdir(src) if f.endswith(".safetensors")) if os.path.isdir(src) else []
  if not files or not os.path.isfile(config_path):
    raise ConversionError(f"w2v-BERT directory {src}", ["needs config.json and *.safetensors (a Hugging Face "
                                                        "Wav2Vec2BertModel, e.g. facebook/w2v-bert-2.0)"])
  with open(config_path) as f:
    cfg = config_from_hf(json.load(f), layers)
  state_dict = {}
  for name in files:
    state_dict.update(safetensors.numpy.load_file(os.path.join(src, name)))
  return cfg, from_state_dict(state_dict, cfg, ours, what=f"w2v-BERT checkpoint {src}")
