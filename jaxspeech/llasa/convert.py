"""Llasa / Llama checkpoints: HF `LlamaForCausalLM` directories in and out of jaxspeech workdirs.

    jaxspeech convert llasa --from hf --src HF_DIR --dst WORKDIR [--scan-layers] [--remat full] [--dtype bfloat16]
    jaxspeech convert llasa --to hf --src WORKDIR --dst HF_DIR [--max-shard-gb 5] [--tokenizer DIR]

Import reads config.json in either generation (transformers 5 `rope_parameters`, or the older top-level
`rope_theta` + `rope_scaling`) and model.safetensors, or shards listed by model.safetensors.index.json.
Export writes config.json (transformers 5 layout), safetensors (sharded with an index above --max-shard-gb),
and a tokenizer. A workdir trained on a sentencepiece model (its config's `llasa.tokenizer`, or
`--tokenizer FILE.model`) gets that model as an HF fast tokenizer in our Llasa id layout
(`jaxspeech.text.hf_tokenizer`: text ids as sentencepiece gives them, `<|reserved_N|>` up to
`llasa.text_vocab_size`, the 8 specials, the `<|s_N|>` codes) and a generation_config.json that stops at
<|SPEECH_GENERATION_END|> with jaxspeech's sampling defaults. `--tokenizer DIR` copies that directory's
tokenizer files instead; an imported workdir copies those of the HF directory it came from.

q/k layout: HF's q_proj/k_proj rows are already in the "rotate half" RoPE layout (dims i and i + K/2 of a
head form a rotation pair; HF's Meta-to-HF script permuted Meta's interleaved pairs into it), and our
`apply_rope` rotates the same halves, so the q/k tables use the plain `HEADS_IN` reshape, no permutation.
"""

import dataclasses
import json
import os
import shutil

import numpy as np
from flax import nnx
import safetensors.numpy

from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import HEADS_IN, HEADS_OUT, LINEAR, ConversionError, Rule, Transform
from jaxspeech.convert.workdir import Imported
from jaxspeech.llasa import generate
from jaxspeech.llasa.model import Llama, LlamaConfig
from jaxspeech.llasa.vocab import NUM_SPEECH_TOKENS, SPECIAL_TOKENS, LlasaVocab
from jaxspeech.text import hf_tokenizer, spm
from jaxspeech.workdir import Workdir

SOURCES = {"hf": "an HF LlamaForCausalLM directory (config.json + model.safetensors or a sharded index)"}
TARGETS = {"hf": "an HF directory for transformers.AutoModelForCausalLM.from_pretrained"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "generation_config.json")

LAYERS = (
    Rule("blocks.{i}.attn_norm.scale", "model.layers.{i}.input_layernorm.weight"),
    Rule("blocks.{i}.attn.q.kernel", "model.layers.{i}.self_attn.q_proj.weight", HEADS_IN),  # rotate-half rows
    Rule("blocks.{i}.attn.k.kernel", "model.layers.{i}.self_attn.k_proj.weight", HEADS_IN),  # rotate-half rows
    Rule("blocks.{i}.attn.v.kernel", "model.layers.{i}.self_attn.v_proj.weight", HEADS_IN),
    Rule("blocks.{i}.attn.o.kernel", "model.layers.{i}.self_attn.o_proj.weight", HEADS_OUT),
    Rule("blocks.{i}.mlp_norm.scale", "model.layers.{i}.post_attention_layernorm.weight"),
    Rule("blocks.{i}.gate.kernel", "model.layers.{i}.mlp.gate_proj.weight", LINEAR),
    Rule("blocks.{i}.up.kernel", "model.layers.{i}.mlp.up_proj.weight", LINEAR),
    Rule("blocks.{i}.down.kernel", "model.layers.{i}.mlp.down_proj.weight", LINEAR),
    Rule("norm.scale", "model.norm.weight"),
)


def vocab_rows(vocab_size: int) -> Transform:
  """Our embedding (padded_vocab, D) <-> HF's (vocab_size, D): the padding rows are zeros on import, cut on export."""
  def to_hf(table_PxD):
    return table_PxD[:vocab_size]

  def from_hf(table_VxD, shape):
    return np.pad(table_VxD, ((0, shape[0] - table_VxD.shape[0]), (0, 0)))
  return Transform(to_hf, from_hf)


def vocab_columns(vocab_size: int) -> Transform:
  """Our lm_head kernel (D, padded_vocab) <-> HF's `lm_head.weight` (vocab_size, D)."""
  rows = vocab_rows(vocab_size)
  return Transform(lambda kernel_DxP: rows.to_hf(kernel_DxP.T),
                   lambda weight_VxD, shape: rows.from_hf(weight_VxD, shape[::-1]).T)


def rules(cfg: LlamaConfig) -> list[Rule]:
  embed = [Rule("embed.embedding", "model.embed_tokens.weight", vocab_rows(cfg.vocab_size))]
  head = [] if cfg.tie_embeddings else [Rule("lm_head.kernel", "lm_head.weight", vocab_columns(cfg.vocab_size))]
  return embed + list(LAYERS) + head


def table(cfg: LlamaConfig) -> mapping.Table:
  return mapping.expand(rules(cfg), cfg.layers)


def stack_layers(params: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
  """Per-layer paths `blocks.{i}.x` -> one `blocks.x` with a leading layer axis (the scanned model's layout)."""
  out = {k: v for k, v in params.items() if not k.startswith("blocks.")}
  names = {k.split(".", 2)[2] for k in params if k.startswith("blocks.")}
  for name in names:
    out[f"blocks.{name}"] = np.stack([params[f"blocks.{i}.{name}"] for i in range(layers)])
  return out


def unstack_layers(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of `stack_layers`."""
  out = {k: v for k, v in params.items() if not k.startswith("blocks.")}
  for key, stacked in params.items():
    if key.startswith("blocks."):
      out.update({f"blocks.{i}.{key.removeprefix('blocks.')}": layer for i, layer in enumerate(stacked)})
  return out


def param_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
  """Dotted path -> shape of every param, in the per-layer (unscanned) layout the table uses."""
  per_layer = dataclasses.replace(cfg, scan_layers=False)
  return mapping.param_shapes(nnx.state(nnx.eval_shape(lambda: Llama(per_layer, nnx.Rngs(0))), nnx.Param))


def from_hf_state_dict(state_dict, cfg: LlamaConfig) -> dict[str, np.ndarray]:
  """Our dotted path -> float32 array (stacked when `cfg.scan_layers`) of an HF LlamaForCausalLM state dict.

  A tied checkpoint may still carry `lm_head.weight` (a copy of the embedding): it is dropped.
  """
  if cfg.tie_embeddings:
    state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
  params = mapping.from_hf(state_dict, table(cfg), param_shapes(cfg), f"HF Llama state dict for {cfg}")
  return stack_layers(params, cfg.layers) if cfg.scan_layers else params


def to_hf_state_dict(params: dict[str, np.ndarray], cfg: LlamaConfig) -> dict[str, np.ndarray]:
  """HF key -> float32 array of our dotted-path params (either layout)."""
  if cfg.scan_layers:
    params = unstack_layers(params)
  return mapping.to_hf(params, table(cfg), param_shapes(cfg), f"Llama params for {cfg}")


def rope_settings(raw: dict) -> dict:
  """Our RoPE fields from an HF config dict: transformers 5 `rope_parameters`, or `rope_theta` + `rope_scaling`."""
  rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
  theta = rope.get("rope_theta", raw.get("rope_theta", 10_000.0))
  kind = rope.get("rope_type", rope.get("type", "default"))
  if kind == "default":
    return dict(rope_theta=float(theta), rope_factor=0.0)
  if kind != "llama3":
    raise ConversionError("HF config", [f"rope type {kind!r} is not supported (only 'default' and 'llama3')"])
  return dict(rope_theta=float(theta), rope_factor=float(rope["factor"]),
              rope_low_freq_factor=float(rope["low_freq_factor"]),
              rope_high_freq_factor=float(rope["high_freq_factor"]),
              rope_original_max_positions=int(rope["original_max_position_embeddings"]))


def hf_config_to_llama(raw: dict, **overrides) -> LlamaConfig:
  """Our config of an HF Llama config.json dict; raises on settings our model does not implement."""
  heads = raw["num_attention_heads"]
  checks = (
      (f"model_type={raw.get('model_type')!r} (not 'llama')", raw.get("model_type") == "llama"),
      (f"hidden_act={raw.get('hidden_act')!r} (ours is 'silu')", raw.get("hidden_act", "silu") == "silu"),
      ("attention_bias=True (ours has none)", not raw.get("attention_bias")),
      ("mlp_bias=True (ours has none)", not raw.get("mlp_bias")),
  )
  problems = [message for message, ok in checks if not ok]
  if problems:
    raise ConversionError("HF config", problems)
  return LlamaConfig(
      vocab_size=raw["vocab_size"], hidden=raw["hidden_size"], layers=raw["num_hidden_layers"], heads=heads,
      kv_heads=raw.get("num_key_value_heads") or heads, head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
      mlp=raw["intermediate_size"], rms_eps=raw.get("rms_norm_eps", 1e-6),
      tie_embeddings=bool(raw.get("tie_word_embeddings", False)), **rope_settings(raw), **overrides)


def llama_to_hf_config(cfg: LlamaConfig, max_positions: int = 131_072) -> dict:
  """config.json of `cfg` for `LlamaForCausalLM`, in the transformers 5 layout (`rope_parameters`)."""
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_factor:
    rope.update(rope_type="llama3", factor=cfg.rope_factor, low_freq_factor=cfg.rope_low_freq_factor,
                high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_positions)
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden, "intermediate_size": cfg.mlp, "num_hidden_layers": cfg.layers,
      "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
      "hidden_act": "silu", "max_position_embeddings": max_positions, "rms_norm_eps": cfg.rms_eps,
      "rope_parameters": rope, "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False,
      "mlp_bias": False, "attention_dropout": 0.0, "dtype": "float32"}


def model_dict(cfg: LlamaConfig) -> dict:
  """config.json's "model" of a workdir holding `cfg`."""
  return dataclasses.asdict(cfg)


def import_checkpoint(source: str, src: str, args):
  """`jaxspeech convert llasa --from hf`: a `jaxspeech.convert.workdir.Imported`."""
  config_path = os.path.join(src, "config.json")
  if not os.path.isfile(config_path):
    raise ConversionError(f"HF directory {src}", ["has no config.json"])
  raw = mapping.read_json(config_path)
  cfg = hf_config_to_llama(raw, scan_layers=args.scan_layers, remat=args.remat, dtype=args.dtype)
  state_dict, filename = mapping.read_hf_weights(src)
  notes = []
  if cfg.tie_embeddings and "lm_head.weight" in state_dict:
    notes.append("tie_word_embeddings: lm_head.weight (a copy of the embedding) is not imported")
  params = from_hf_state_dict(state_dict, cfg)
  tokenizer = [name for name in TOKENIZER_FILES if os.path.exists(os.path.join(src, name))]
  provenance = {"layout": "LlamaForCausalLM", "file": filename, "hf_config": raw, "tokenizer_files": tokenizer}
  return Imported(model=model_dict(cfg), params=params, provenance=provenance, notes=notes)


def write_safetensors(state_dict: dict[str, np.ndarray], dst: str, max_shard_bytes: int) -> list[str]:
  """model.safetensors, or shards plus model.safetensors.index.json when larger than `max_shard_bytes`."""
  shards, size = [[]], 0
  for key in sorted(state_dict):
    nbytes = state_dict[key].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(key)
    size += nbytes
  if len(shards) == 1:
    names = ["model.safetensors"]
  else:
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {key: name for name, keys in zip(names, shards) for key in keys}
    total = sum(x.nbytes for x in state_dict.values())
    with open(os.path.join(dst, mapping.WEIGHT_INDEX), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  for name, keys in zip(names, shards):
    safetensors.numpy.save_file({k: state_dict[k] for k in keys}, os.path.join(dst, name), metadata={"format": "pt"})
  return names


def export_vocab(cfg: LlamaConfig, llasa: dict) -> LlasaVocab:
  """The Llasa id layout of a workdir (its config's `llasa` section; without one, 65,536 codes after the
  text ids, as `jaxspeech llasa synthesize` reads it); refused unless it spans exactly `model.vocab_size`."""
  speech = int(llasa.get("num_speech_tokens", NUM_SPEECH_TOKENS))
  vocab = LlasaVocab(int(llasa.get("text_vocab_size", cfg.vocab_size - len(SPECIAL_TOKENS) - speech)), speech)
  if vocab.size != cfg.vocab_size:
    raise ConversionError("the Llasa vocabulary", [
        f"llasa.text_vocab_size={vocab.text_vocab_size} + {len(SPECIAL_TOKENS)} specials + llasa.num_speech_tokens="
        f"{speech} is {vocab.size} ids, but model.vocab_size={cfg.vocab_size}"])
  return vocab


def generation_config(vocab: LlasaVocab) -> dict:
  """generation_config.json: stop at <|SPEECH_GENERATION_END|>, sample as `jaxspeech llasa synthesize` does."""
  end, sampling = vocab.special("SPEECH_GENERATION_END"), generate.Sampling()
  return {"eos_token_id": end, "pad_token_id": end, "do_sample": True, "temperature": sampling.temperature,
          "top_k": sampling.top_k, "top_p": sampling.top_p, "repetition_penalty": sampling.repetition_penalty}


def write_tokenizer(spm_path: str, vocab: LlasaVocab, dst: str, field: str) -> list[str]:
  """The sentencepiece model at `spm_path` (named by `field`) as an HF tokenizer in `vocab`'s layout, and
  generation_config.json, in `dst`; the names written."""
  if not os.path.isfile(spm_path):
    raise ConversionError("the tokenizer", [f"{field}={spm_path}: no such file (run from the directory the run was "
                                            "started in, or pass --tokenizer FILE.model or DIR)"])
  tokenizer = spm.Tokenizer.load(spm_path)
  if tokenizer.vocab_size > vocab.text_vocab_size:
    raise ConversionError("the tokenizer", [f"{field}={spm_path} has {tokenizer.vocab_size} pieces, more than "
                                            f"llasa.text_vocab_size={vocab.text_vocab_size}"])
  added = [(token, token in SPECIAL_TOKENS) for token in vocab.added_tokens()]
  hf = hf_tokenizer.from_sentencepiece(tokenizer.model_proto, added, pad_to=vocab.text_vocab_size)
  end = "<|SPEECH_GENERATION_END|>"
  files = hf_tokenizer.save(hf, dst, eos_token=end, pad_token=end)
  with open(os.path.join(dst, "generation_config.json"), "w") as f:
    json.dump(generation_config(vocab), f, indent=2)
  return files + ["generation_config.json"]


def export_tokenizer(cfg: LlamaConfig, checkpoint, dst: str, args) -> str:
  """Writes or copies the tokenizer files (see the module docstring); the line to print."""
  llasa = Workdir(args.src).config.get("llasa") or {}
  given, trained = args.tokenizer, llasa.get("tokenizer")
  if given and given.endswith(".json"):
    raise ConversionError("the tokenizer", [f"--tokenizer {given}: give the directory that holds it"])
  if given and not os.path.isdir(given):
    spm_path, field = given, "--tokenizer"
  elif not given and trained and not trained.endswith(".json"):
    spm_path, field = trained, "llasa.tokenizer"
  else:
    spm_path = None
  if spm_path:
    files = write_tokenizer(spm_path, export_vocab(cfg, llasa), dst, field)
    return f"tokenizer of {spm_path} ({field}), in the Llasa id layout: {', '.join(files)}"
  tokenizer_dir = given or checkpoint.provenance.get("source")
  copied = [name for name in TOKENIZER_FILES
            if tokenizer_dir and os.path.isfile(os.path.join(tokenizer_dir, name))]
  for name in copied:
    shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(dst, name))
  return f"tokenizer files from {tokenizer_dir}: {', '.join(copied)}" if copied else "no tokenizer files"


def export_checkpoint(target: str, checkpoint, dst: str, args) -> list[str]:
  """`jaxspeech convert llasa --to hf`: config.json, safetensors and tokenizer files into `dst`; lines to print."""
  fields = {f.name for f in dataclasses.fields(LlamaConfig)}
  unknown = sorted(checkpoint.model.keys() - fields)
  if unknown:
    raise ConversionError(f"workdir model {checkpoint.model}", [f"model.{k} is not a LlamaConfig field" for k in unknown])
  cfg = LlamaConfig(**checkpoint.model)
  tokenizer = export_tokenizer(cfg, checkpoint, dst, args)
  state_dict = to_hf_state_dict(checkpoint.params, cfg)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(llama_to_hf_config(cfg), f, indent=2)
  files = write_safetensors(state_dict, dst, int(args.max_shard_gb * 2**30))
  return [f"LlamaForCausalLM, {'tied' if cfg.tie_embeddings else 'untied'} embeddings, vocab {cfg.vocab_size}",
          f"{len(state_dict)} tensors in {len(files)} file(s)", tokenizer]


def add_arguments(parser) -> None:
  g = parser.add_argument_group("import (--from hf)")
  g.add_argument("--scan-layers", action="store_true", help="store the layers stacked, for nnx.scan")
  g.add_argument("--remat", choices=("none", "full", "save_dots"), default="none", help="rematerialisation policy")
  g.add_argument("--dtype", default="float32", help="compute dtype in the workdir's model config (params float32)")
  g = parser.add_argument_group("export (--to hf)")
  g.add_argument("--max-shard-gb", type=float, default=5.0, help="safetensors shard size (GiB)")
  g.add_argument("--tokenizer", default=None,
                 help="a sentencepiece FILE.model to convert, or a DIR whose HF tokenizer files to copy (default: "
                      "the workdir's llasa.tokenizer when it is a sentencepiece model, else the HF directory "
                      "it was imported from)")
