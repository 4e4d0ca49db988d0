"""transformers' own `Xcodec2Model` (`model_type: xcodec2`) directories in and out of codec workdirs.

    jaxspeech convert codec --to hf --src WORKDIR --dst DIR      (DIR/config.json as Xcodec2Config, model.safetensors)
    jaxspeech convert codec --from hf --src DIR --dst WORKDIR

Xcodec2Model always runs the semantic branch and holds its w2v-BERT: `semantic_encoder` (a Wav2Vec2BertModel of
`semantic_model_config.num_hidden_layers` layers, whose last hidden state is our teacher's hidden_states[layers])
→ `semantic_adapter` (our `semantic_encoder`) concatenated with `acoustic_encoder` → `fc_encoder` (our `fc_prior`)
→ FSQ → `acoustic_decoder` (`fc` is our `fc_post_a`). It has no `fc_post_s` or `SemanticDecoder` (training
only: an import initialises them). Its convolutions are plain: our weight-normalised encoder convs export as
g · v / ‖v‖ and import as v = weight, g = ‖weight‖ (the same kernel; HF → workdir → HF is bit for bit).
Its buffers (filters, window, FSQ codebook) are not in the state dict.

What Xcodec2Model hard-codes or ties together, `problems` checks: an export of any other codec is refused
naming the field, so no file is written that loads and computes something else.
"""

import numpy as np
from flax import nnx
from jaxspeech.codec.encoder import EncoderConfig
from jaxspeech.codec.model import TEACHER, Codec, CodecConfig, FSQConfig, SemanticConfig
from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import CONV1D, HEADS_IN, HEADS_OUT, LINEAR, SAME, ConversionError, Rule, Transform
from jaxspeech.teachers.w2vbert import convert as w2vbert_convert
from jaxspeech.vocoder.decoder import DecoderConfig

DILATIONS = [1, 3, 9]        # Xcodec2EncoderBlock's res_unit1..3
NORM_GROUPS = 32             # Xcodec2ResNetBlock's GroupNorm
EPS = 1e-6                   # its RMSNorm (rms_norm_eps), GroupNorm and LayerNorm, as ours
W2VBERT_INPUT = 160          # Xcodec2FeatureExtractor: 80 mel bins stacked in pairs
SEMANTIC = "semantic_encoder."   # Xcodec2Model's w2v-BERT, our TEACHER
QKV = "self_attn.qkv.weight"     # stands for q_proj, k_proj, v_proj (our fused c_attn) between the table and the file
NOT_EXPORTED = ("fc_post_s", "semantic_decoder")


def _wn_norm(v_KxIxO: np.ndarray) -> np.ndarray:
  return np.sqrt(np.sum(np.square(v_KxIxO, dtype=np.float32), axis=(0, 1)))


def wn_to_hf(g_and_v) -> np.ndarray:
  """(weight_g (O,), weight_v (K, I, O)) as the plain torch Conv1d weight (O, I, K) they make."""
  g_O, v_KxIxO = g_and_v
  with np.errstate(invalid="ignore"):   # mapping sizes the tensor from zeros
    return CONV1D.to_hf(v_KxIxO * (g_O / _wn_norm(v_KxIxO)))


def wn_from_hf(weight_OxIxK: np.ndarray, shapes) -> tuple[np.ndarray, np.ndarray]:
  """v = the kernel, g = its norm: g / ‖v‖ is exactly 1, so exporting it again gives the same weight."""
  v_KxIxO = np.ascontiguousarray(CONV1D.from_hf(weight_OxIxK, shapes[1]))   # the layout the export sums over
  return _wn_norm(v_KxIxO), v_KxIxO


WEIGHT_NORMED = Transform(wn_to_hf, wn_from_hf)


def _conv(ours: str, theirs: str, bias: bool = True, weight_norm: bool = False) -> list[Rule]:
  weight = (Rule((f"{ours}.weight_g", f"{ours}.weight_v"), f"{theirs}.weight", WEIGHT_NORMED) if weight_norm
            else Rule(f"{ours}.kernel", f"{theirs}.weight", CONV1D))
  return [weight, Rule(f"{ours}.bias", f"{theirs}.bias")] if bias else [weight]


def _linear(ours: str, theirs: str, transform: Transform = LINEAR, bias: bool = True) -> list[Rule]:
  rules = [Rule(f"{ours}.kernel", f"{theirs}.weight", transform)]
  return rules + [Rule(f"{ours}.bias", f"{theirs}.bias")] if bias else rules


def _norm(ours: str, theirs: str, bias: bool = True) -> list[Rule]:
  rules = [Rule(f"{ours}.scale", f"{theirs}.weight", SAME)]
  return rules + [Rule(f"{ours}.bias", f"{theirs}.bias")] if bias else rules


def _snake(ours: str, theirs: str) -> list[Rule]:
  return [Rule(f"{ours}.alpha", f"{theirs}.act.alpha"), Rule(f"{ours}.beta", f"{theirs}.act.beta")]


def _encoder(cfg) -> list[Rule]:
  rules = _conv("encoder.conv_in", "acoustic_encoder.conv1", weight_norm=True)
  for b in range(len(cfg.encoder.strides)):
    ours, theirs = f"encoder.blocks.{b}", f"acoustic_encoder.block.{b}"
    for u in range(len(DILATIONS)):
      unit = f"{theirs}.res_unit{u + 1}"
      rules += _snake(f"{ours}.units.{u}.act1", f"{unit}.snake1")
      rules += _conv(f"{ours}.units.{u}.conv1", f"{unit}.conv1", weight_norm=True)
      rules += _snake(f"{ours}.units.{u}.act2", f"{unit}.snake2")
      rules += _conv(f"{ours}.units.{u}.conv2", f"{unit}.conv2", weight_norm=True)
    rules += _snake(f"{ours}.act", f"{theirs}.snake1") + _conv(f"{ours}.conv", f"{theirs}.conv1", weight_norm=True)
  rules += _snake("encoder.act", "acoustic_encoder.snake1")
  return rules + _conv("encoder.conv_out", "acoustic_encoder.conv2", weight_norm=True)


def _resnet(ours: str, theirs: str) -> list[Rule]:
  return (_norm(f"{ours}.norm1", f"{theirs}.norm1") + _conv(f"{ours}.conv1", f"{theirs}.conv1")
          + _norm(f"{ours}.norm2", f"{theirs}.norm2") + _conv(f"{ours}.conv2", f"{theirs}.conv2"))


def _decoder(cfg) -> list[Rule]:
  rules = _linear("fc_post_a", "acoustic_decoder.fc") + _conv("decoder.embed", "acoustic_decoder.embed")
  for i in range(2):
    rules += _resnet(f"decoder.prior_net.{i}", f"acoustic_decoder.prior_net.{i}")
    rules += _resnet(f"decoder.post_net.{i}", f"acoustic_decoder.post_net.{i}")
  for i in range(cfg.decoder.depth):
    ours, theirs = f"decoder.transformers.{i}", f"acoustic_decoder.layers.{i}"
    rules += _norm(f"{ours}.att_norm", f"{theirs}.input_layernorm", bias=False)
    rules += _linear(f"{ours}.c_attn", f"{theirs}.{QKV[:-len('.weight')]}", HEADS_IN, bias=False)
    rules += _linear(f"{ours}.c_proj", f"{theirs}.self_attn.o_proj", HEADS_OUT, bias=False)
    rules += _norm(f"{ours}.ffn_norm", f"{theirs}.post_attention_layernorm", bias=False)
    rules += _linear(f"{ours}.fc1", f"{theirs}.mlp.fc1", bias=False)
    rules += _linear(f"{ours}.fc2", f"{theirs}.mlp.fc2", bias=False)
  return rules + _norm("decoder.final_norm", "acoustic_decoder.norm") + _linear("decoder.head.out",
                                                                                "acoustic_decoder.head.linear")


def rules(cfg) -> list[Rule]:
  """Our codec params (the teacher aside) ↔ Xcodec2Model keys, `self_attn.qkv` standing for q/k/v_proj."""
  semantic = "semantic_adapter"
  return (_encoder(cfg) + _linear("fc_prior", "fc_encoder")
          + _linear("quantizer.project_in", "quantizer.project_in")
          + _linear("quantizer.project_out", "quantizer.project_out")
          + _conv("semantic_encoder.initial_conv", f"{semantic}.conv1", bias=False)
          + _conv("semantic_encoder.conv1", f"{semantic}.conv2") + _conv("semantic_encoder.conv2", f"{semantic}.conv3")
          + _conv("semantic_encoder.final_conv", f"{semantic}.conv4", bias=False) + _decoder(cfg))


def table(cfg) -> mapping.Table:
  """HF key → our path(s) for the whole Xcodec2Model: the codec's rules and w2v-BERT's under `semantic_encoder.`."""
  codec = {rule.hf: (rule.ours, rule.transform) for rule in rules(cfg)}
  return {**codec, **w2vbert_convert.table(cfg.semantic.w2vbert, ours=TEACHER + ".", theirs=SEMANTIC)}


def param_shapes(cfg) -> dict[str, tuple[int, ...]]:
  return mapping.param_shapes(nnx.state(nnx.eval_shape(lambda: Codec(cfg, rngs=nnx.Rngs(0))), nnx.Param))


def split_qkv(state_dict: dict) -> dict:
  """Each `self_attn.qkv.weight` (3·H·K, D) as q_proj, k_proj and v_proj weights (H·K, D)."""
  out = {}
  for key, w in state_dict.items():
    if key.endswith(QKV):
      prefix = key[:-len("qkv.weight")]
      out.update({f"{prefix}{name}_proj.weight": part for name, part in zip("qkv", mapping.split_qkv(w))})
    else:
      out[key] = w
  return out


def join_qkv(state_dict: dict) -> dict:
  """Inverts `split_qkv`."""
  out = dict(state_dict)
  for key in [k for k in state_dict if k.endswith("self_attn.q_proj.weight")]:
    prefix = key[:-len("q_proj.weight")]
    out[f"{prefix}qkv.weight"] = mapping.fuse_qkv(*(mapping.as_numpy(out.pop(f"{prefix}{name}_proj.weight"))
                                                    for name in "qkv"))
  return out


def problems(cfg) -> list[str]:
  """Every field of our codec config (config.model) that Xcodec2Model cannot represent, one line each."""
  out = []
  if not cfg.semantic.enabled:
    return ["semantic.enabled is False: Xcodec2Model always runs its semantic branch (a w2v-BERT semantic_encoder, "
            "semantic_adapter, fc_encoder over both); an acoustic-only codec has none of them"]
  w2vbert = cfg.semantic.w2vbert
  if not w2vbert:
    out.append("semantic.w2vbert is None: Xcodec2Model holds its w2v-BERT (semantic_encoder); import one with "
               "`jaxspeech convert codec --from xcodec2 ... --w2vbert DIR` (or train with it)")
  elif w2vbert.input_dim != W2VBERT_INPUT:
    out.append(f"semantic.w2vbert.input_dim {w2vbert.input_dim}: Xcodec2FeatureExtractor gives {W2VBERT_INPUT}")
  if cfg.semantic.dim != cfg.semantic.features:
    out.append(f"semantic.dim {cfg.semantic.dim} != semantic.features {cfg.semantic.features}: Xcodec2Model's "
               "semantic_adapter is w2v-BERT's width throughout")
  if list(cfg.encoder.dilations) != DILATIONS:
    out.append(f"encoder.dilations {list(cfg.encoder.dilations)}: Xcodec2Model's are {DILATIONS}")
  if cfg.encoder.dim != cfg.decoder.dim or cfg.decoder.input_channels != cfg.decoder.dim:
    out.append(f"encoder.dim {cfg.encoder.dim}, decoder.input_channels {cfg.decoder.input_channels} and "
               f"decoder.dim {cfg.decoder.dim} differ: Xcodec2Model has one hidden_size for all three")
  if cfg.fsq.dim != cfg.encoder.dim + cfg.semantic.dim:
    out.append(f"fsq.dim {cfg.fsq.dim} != encoder.dim + semantic.dim = {cfg.encoder.dim + cfg.semantic.dim}: "
               "Xcodec2Model's fc_encoder keeps the concatenation's width")
  if cfg.decoder.norm_groups != NORM_GROUPS:
    out.append(f"decoder.norm_groups {cfg.decoder.norm_groups}: Xcodec2Model's GroupNorm has {NORM_GROUPS} groups")
  if cfg.decoder.n_fft != 4 * cfg.decoder.hop:
    out.append(f"decoder.n_fft {cfg.decoder.n_fft}: Xcodec2Model's is 4 × hop = {4 * cfg.decoder.hop}")
  return out


def check(cfg) -> None:
  found = problems(cfg)
  if found:
    raise ConversionError("codec config (Xcodec2Model cannot represent it)", found)


def w2vbert_config(w2vbert) -> dict:
  """The `Wav2Vec2BertConfig` fields of our w2v-BERT config (inverse of `w2vbert_convert.config_from_hf`); no
  SpecAugment, so it has no `masked_spec_embed`."""
  return {"model_type": "wav2vec2-bert", "feature_projection_input_dim": w2vbert.input_dim,
          "hidden_size": w2vbert.dim, "num_hidden_layers": w2vbert.layers, "num_attention_heads": w2vbert.heads,
          "intermediate_size": w2vbert.intermediate, "conv_depthwise_kernel_size": w2vbert.conv_kernel,
          "position_embeddings_type": w2vbert.position, "left_max_position_embeddings": w2vbert.left_max,
          "right_max_position_embeddings": w2vbert.right_max, "rotary_embedding_base": w2vbert.rotary_base,
          "layer_norm_eps": w2vbert.eps, "hidden_act": "swish", "mask_time_prob": 0.0, "mask_feature_prob": 0.0}


def hf_config(cfg) -> dict:
  """config.json for `Xcodec2Config` of a representable codec config."""
  check(cfg)
  dim, heads = cfg.decoder.dim, cfg.decoder.heads
  return {"model_type": "xcodec2", "architectures": ["Xcodec2Model"], "sampling_rate": cfg.sample_rate,
          "encoder_hidden_size": cfg.encoder.channels, "downsampling_ratios": list(cfg.encoder.strides),
          "hidden_size": dim, "intermediate_size": 4 * dim, "num_hidden_layers": cfg.decoder.depth,
          "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": dim // heads,
          "hidden_act": "silu", "rms_norm_eps": EPS, "attention_bias": False,
          "quantization_dim": cfg.fsq.dim, "quantization_levels": list(cfg.fsq.levels),
          "semantic_model_config": w2vbert_config(cfg.semantic.w2vbert)}


def config_from_hf(hf: dict) -> CodecConfig:
  """Our `config.model` of an Xcodec2Config (config.json as a dict); what we cannot run is a ConversionError."""
  semantic = hf.get("semantic_model_config") or {}
  dim, heads = hf.get("hidden_size", 1024), hf.get("num_attention_heads", 16)
  found = [f"{field} {hf[field]!r}: we run {value!r}" for field, value in
           [("hidden_act", "silu"), ("attention_bias", False), ("rms_norm_eps", EPS),
            ("intermediate_size", 4 * dim), ("num_key_value_heads", heads), ("head_dim", dim // heads)]
           if field in hf and hf[field] != value]
  if semantic.get("model_type", "wav2vec2-bert") != "wav2vec2-bert":
    found.append(f"semantic_model_config.model_type {semantic['model_type']!r}: we run wav2vec2-bert")
  if found:
    raise ConversionError("Xcodec2Config", found)
  w2vbert = w2vbert_convert.config_from_hf(semantic, layers=semantic.get("num_hidden_layers", 16))
  strides = list(hf.get("downsampling_ratios", [2, 2, 4, 4, 5]))
  hop = int(np.prod(strides))
  cfg = CodecConfig(
      sample_rate=hf.get("sampling_rate", 16000),
      encoder=EncoderConfig(channels=hf.get("encoder_hidden_size", 48), strides=strides, dilations=DILATIONS, dim=dim),
      semantic=SemanticConfig(enabled=True, features=w2vbert.dim, dim=w2vbert.dim, w2vbert=w2vbert),
      fsq=FSQConfig(levels=hf.get("quantization_levels", [4] * 8), dim=hf.get("quantization_dim", 2048)),
      decoder=DecoderConfig(input_channels=dim, dim=dim, depth=hf.get("num_hidden_layers", 12), heads=heads,
                            n_fft=4 * hop, hop=hop, norm_groups=NORM_GROUPS))
  check(cfg)
  return cfg


def to_state_dict(params: dict[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
  """Xcodec2Model's state dict of our params (`fc_post_s` and `semantic_decoder` left out)."""
  check(cfg)
  shapes = param_shapes(cfg)
  kept = {k: v for k, v in params.items() if not k.startswith(NOT_EXPORTED)}
  return split_qkv(mapping.to_hf(kept, table(cfg), shapes, "codec params for Xcodec2Model"))


def from_state_dict(state_dict, cfg, what: str = "Xcodec2Model state dict") -> dict[str, np.ndarray]:
  """Our dotted path → float32 array; `state_dict` must hold exactly Xcodec2Model's keys."""
  mapping.check_keys(state_dict, split_qkv(dict.fromkeys(table(cfg), np.zeros((3, 1)))), what)
  return mapping.from_hf(join_qkv(state_dict), table(cfg), param_shapes(cfg), what)
