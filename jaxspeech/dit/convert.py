"""F5-TTS checkpoints in and out of dit workdirs. `jaxspeech convert dit` runs the functions at the end.

    jaxspeech convert dit --from f5 --src model_1250000.safetensors --dst WORKDIR [--config=configs/dit.py:base
        --config.model.heads=16 ...] [--vocab vocab.txt]
    jaxspeech convert dit --to f5 --src WORKDIR --dst DIR     (model.safetensors, vocab.txt, model.yaml)
    jaxspeech convert dit --to f5 --src WORKDIR --dst model.safetensors     (the checkpoint alone)

F5 checkpoints (`.pt`: `ema_model_state_dict` with `ema_model.transformer.*` keys plus `initted`/`step`, or
`model_state_dict` with `transformer.*`; `.safetensors`: the EMA dict) do not record the model config, so
the import takes one (`configs/dit.py:<size>` plus overrides) and checks every tensor's shape against it.
Export writes the `.safetensors` EMA dict that f5-tts' `load_checkpoint` reads; into a directory, with the run's
vocabulary as F5's vocab.txt and an F5 config yaml, so that `f5_tts.infer.utils_infer.load_model` builds and
loads the model from them. The text embedding is cut to the vocabulary (F5 sizes it from vocab.txt): its rows
past the vocabulary are never read, since our tokenizer maps unknown characters to 0, as F5's does.

`rotary_embed.inv_freq` is a buffer, not a param: import checks it against the config's head size, export
writes it. Conv1d weights (O, I/groups, K) become Flax kernels (K, I/groups, O); the AdaLN Linears' output
chunks (shift, scale, gate, ...) become a leading chunk axis of our kernel.
"""

import argparse
import dataclasses
import os

import numpy as np
from flax import nnx
import safetensors.numpy
import yaml

from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import CONV1D, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, ConversionError, Rule, Transform
from jaxspeech.dit import consistency, modules
from jaxspeech.dit.model import DiTConfig, build, config_from
from jaxspeech.convert.workdir import Imported, staged
from jaxspeech.dit import family as dit_family
from jaxspeech.dit import vocab
from jaxspeech.train import config as config_lib


def grn_to_f5(x_H: np.ndarray) -> np.ndarray:
  """A GRN γ or β (H,) as F5's (1, 1, H)."""
  return x_H.reshape(1, 1, -1)


def grn_from_f5(x_1x1xH: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return x_1x1xH.reshape(shape)


GRN = Transform(grn_to_f5, grn_from_f5)
ROPE_BUFFER = "rotary_embed.inv_freq"


def _linear(ours: str, f5: str, transform: Transform = LINEAR, bias: Transform = mapping.SAME) -> tuple[Rule, Rule]:
  return Rule(f"{ours}.kernel", f"{f5}.weight", transform), Rule(f"{ours}.bias", f"{f5}.bias", bias)


EMBEDDINGS = (
    *_linear("embed.time_embed.fc1", "time_embed.time_mlp.0"),
    *_linear("embed.time_embed.fc2", "time_embed.time_mlp.2"),
    Rule("embed.text_embed.embed.embedding", "text_embed.text_embed.weight"),
    *_linear("embed.input_embed.proj", "input_embed.proj"),
    *_linear("embed.input_embed.conv1", "input_embed.conv_pos_embed.conv1d.0", CONV1D),
    *_linear("embed.input_embed.conv2", "input_embed.conv_pos_embed.conv1d.2", CONV1D),
)
TEXT_BLOCKS = (
    *_linear("embed.text_embed.blocks.{i}.dwconv", "text_embed.text_blocks.{i}.dwconv", CONV1D),
    Rule("embed.text_embed.blocks.{i}.norm.scale", "text_embed.text_blocks.{i}.norm.weight"),
    Rule("embed.text_embed.blocks.{i}.norm.bias", "text_embed.text_blocks.{i}.norm.bias"),
    *_linear("embed.text_embed.blocks.{i}.pwconv1", "text_embed.text_blocks.{i}.pwconv1"),
    Rule("embed.text_embed.blocks.{i}.grn_gamma", "text_embed.text_blocks.{i}.grn.gamma", GRN),
    Rule("embed.text_embed.blocks.{i}.grn_beta", "text_embed.text_blocks.{i}.grn.beta", GRN),
    *_linear("embed.text_embed.blocks.{i}.pwconv2", "text_embed.text_blocks.{i}.pwconv2"),
)


def _attention(ours: str, f5: str) -> tuple[Rule, ...]:
  return (*_linear(f"{ours}.query", f"{f5}.to_q", HEADS_IN, HEADS_BIAS),
          *_linear(f"{ours}.key", f"{f5}.to_k", HEADS_IN, HEADS_BIAS),
          *_linear(f"{ours}.value", f"{f5}.to_v", HEADS_IN, HEADS_BIAS),
          *_linear(f"{ours}.out", f"{f5}.to_out.0", HEADS_OUT))


DIT = (
    *_linear("blocks.{i}.modulation", "transformer_blocks.{i}.attn_norm.linear", HEADS_IN, HEADS_BIAS),
    *_attention("blocks.{i}.attn", "transformer_blocks.{i}.attn"),
    *_linear("blocks.{i}.ff.fc1", "transformer_blocks.{i}.ff.ff.0.0"),
    *_linear("blocks.{i}.ff.fc2", "transformer_blocks.{i}.ff.ff.2"),
    *_linear("norm_out", "norm_out.linear", HEADS_IN, HEADS_BIAS),
    *_linear("proj_out", "proj_out"),
)
UNETT = (  # F5 keeps each layer as a ModuleList [skip_proj, attn_norm, attn, ff_norm, ff]
    Rule("layers.{i}.attn_norm.scale", "layers.{i}.1.g"),
    *_attention("layers.{i}.attn", "layers.{i}.2"),
    Rule("layers.{i}.ff_norm.scale", "layers.{i}.3.g"),
    *_linear("layers.{i}.ff.fc1", "layers.{i}.4.ff.0.0"),
    *_linear("layers.{i}.ff.fc2", "layers.{i}.4.ff.2"),
    Rule("norm_out.scale", "norm_out.g"),
    *_linear("proj_out", "proj_out"),
)
SKIP_PROJ = Rule("layers.{i}.skip_proj.kernel", "layers.{i}.0.weight", LINEAR)


def table(cfg: DiTConfig) -> mapping.Table:
  """F5 key (without the `transformer.` prefix) -> (our dotted param path, transform), for `cfg`."""
  out = {**mapping.expand(EMBEDDINGS, 0), **mapping.expand(TEXT_BLOCKS, cfg.conv_layers)}
  if cfg.backbone == "dit":
    return {**out, **mapping.expand(DIT, cfg.depth)}
  out.update(mapping.expand(UNETT, cfg.depth))
  if cfg.skip_connect == "concat":
    out.update({SKIP_PROJ.hf.format(i=i): (SKIP_PROJ.ours.format(i=i), LINEAR)
                for i in range(cfg.depth // 2, cfg.depth)})
  return out


def param_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
  return mapping.param_shapes(nnx.state(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0))), nnx.Param))


def rope_buffer(cfg: DiTConfig) -> np.ndarray:
  """x-transformers' `inv_freq` for the config's head size."""
  return modules.rope_angles(2, cfg.dim_head)[1, ::2].copy()


def from_f5_state_dict(state_dict, cfg: DiTConfig, what: str = "F5 DiT state dict") -> dict[str, np.ndarray]:
  """Our dotted path -> float32 array, from a bare `DiT`/`UNetT` state dict (no `transformer.` prefix).

  Missing, unexpected and misshaped keys (and a RoPE buffer of another head size) raise one ConversionError
  listing them all.
  """
  state_dict = dict(state_dict)
  problems = []
  if ROPE_BUFFER in state_dict:
    inv_freq = mapping.as_numpy(state_dict.pop(ROPE_BUFFER))
    if inv_freq.shape != rope_buffer(cfg).shape or not np.allclose(inv_freq, rope_buffer(cfg), rtol=1e-6):
      problems.append(f"{ROPE_BUFFER} {inv_freq.shape} is not RoPE's for dim_head={cfg.dim_head}")
  else:
    problems.append(f"missing key {ROPE_BUFFER}")
  expected = table(cfg)
  problems += [f"missing key {k}" for k in sorted(expected.keys() - state_dict.keys())]
  problems += [f"unexpected key {k}" for k in sorted(state_dict.keys() - expected.keys())]
  common = {k: v for k, v in expected.items() if k in state_dict}
  try:  # every shape is checked, even with keys missing
    params = mapping.from_hf({k: state_dict[k] for k in common}, common, param_shapes(cfg), what)
  except ConversionError as e:
    problems += e.problems
  if problems:
    raise ConversionError(f"{what} for {cfg}", problems)
  return params


def to_f5_state_dict(params, cfg: DiTConfig) -> dict[str, np.ndarray]:
  """A bare `DiT`/`UNetT` state dict (float32 numpy) of our dotted params, with the RoPE buffer."""
  state_dict = mapping.to_hf(params, table(cfg), param_shapes(cfg), f"dit params for {cfg}")
  return {**state_dict, ROPE_BUFFER: rope_buffer(cfg)}


# ------------------------------------------------------------------------------- `jaxspeech convert dit`

SOURCES = {"f5": "an F5-TTS checkpoint: .pt (ema_model_state_dict or model_state_dict) or .safetensors (EMA)"}
TARGETS = {"f5": "a directory for f5-tts' load_model (model.safetensors, vocab.txt, model.yaml); a --dst ending in "
                 ".safetensors: that file alone (the EMA dict that f5-tts' load_checkpoint reads)"}
EXPORTS_FILE = True  # this converter stages its output itself: a file or a directory
DEFAULT_CONFIG = "configs/dit.py:base"
# Keys of F5 checkpoints that hold no param: EMA bookkeeping, and mel buffers of old checkpoints.
UNUSED = ("initted", "step", "mel_spec.mel_stft.mel_scale.fb", "mel_spec.mel_stft.spectrogram.window")


def _flag_bool(text: str) -> bool:
  return text.lower() in ("1", "true", "yes")


def add_arguments(parser) -> None:
  g = parser.add_argument_group("model (import): F5 checkpoints do not record their config")
  g.add_argument("--config", default=DEFAULT_CONFIG,
                 help=f"a dit config file and variant whose model section describes the checkpoint ({DEFAULT_CONFIG})")
  for field in dataclasses.fields(DiTConfig):
    kind = _flag_bool if field.type is bool else field.type
    g.add_argument(f"--config.model.{field.name}", dest=f"model_{field.name}", type=kind, default=None,
                   help=argparse.SUPPRESS)
  g.add_argument("--vocab", default=None, help="the checkpoint's vocab.txt; its size must be the embedding's rows - 1")


def load_config(spec: str):
  """`path.py:variant` -> that config (`jaxspeech.train.config.load`)."""
  try:
    return config_lib.load(spec, [])
  except ValueError as e:
    raise ConversionError("--config", [str(e)]) from None


def _model_config(args) -> DiTConfig:
  model = load_config(args.config).model.to_dict()
  model.update({f.name: getattr(args, f"model_{f.name}") for f in dataclasses.fields(DiTConfig)
                if getattr(args, f"model_{f.name}") is not None})
  return config_from(model)


def _load(src: str) -> dict:
  if src.endswith(".safetensors"):
    return {"ema_model_state_dict": dict(safetensors.numpy.load_file(src))}
  import torch  # pylint: disable=import-outside-toplevel  (F5's .pt files are torch pickles)
  return torch.load(src, map_location="cpu", weights_only=True)


def read_f5(src: str) -> tuple[dict, dict]:
  """(bare DiT state dict, provenance) of an F5 checkpoint; the EMA weights when it has them."""
  if not os.path.isfile(src):
    raise ConversionError(f"F5 checkpoint {src}", ["no such file"])
  try:
    checkpoint = _load(src)
  except Exception as e:  # pylint: disable=broad-except  (torch, pickle, zip and safetensors errors)
    raise ConversionError(f"cannot read {src}", [f"{type(e).__name__}: {str(e).splitlines()[:1]}"]) from None
  for layout, prefix in (("ema_model_state_dict", "ema_model."), ("model_state_dict", "")):
    if isinstance(checkpoint, dict) and layout in checkpoint:
      break
  else:
    raise ConversionError(f"F5 checkpoint {src}", ["has neither ema_model_state_dict nor model_state_dict"])
  state_dict = {k.removeprefix(prefix): v for k, v in checkpoint[layout].items()}
  unused = sorted(k for k in state_dict if k in UNUSED)
  step = mapping.as_numpy(state_dict["step"]).item() if "step" in state_dict else None
  state_dict = {k.removeprefix("transformer."): v for k, v in state_dict.items() if k not in UNUSED}
  return state_dict, {"layout": layout, "unused": unused, "ema_step": step,
                      "update": int(checkpoint["update"]) if "update" in checkpoint else None}


def import_checkpoint(source: str, src: str, args):
  """`jaxspeech convert dit --from f5`: a `jaxspeech.convert.workdir.Imported`."""
  state_dict, provenance = read_f5(src)
  cfg, notes = _model_config(args), []
  embed = "text_embed.text_embed.weight"
  if embed in state_dict and state_dict[embed].shape[0] - 1 != cfg.text_num_embeds:
    notes.append(f"text_num_embeds={state_dict[embed].shape[0] - 1} from the checkpoint's {embed} "
                 f"(the config says {cfg.text_num_embeds})")
    cfg = dataclasses.replace(cfg, text_num_embeds=int(state_dict[embed].shape[0]) - 1)
  params = from_f5_state_dict(state_dict, cfg, f"F5 checkpoint {src}")
  vocab_file = ""
  if args.vocab:
    size = len(vocab.read(args.vocab))
    if size != cfg.text_num_embeds:
      raise ConversionError(f"--vocab {args.vocab}",
                            [f"has {size} tokens; the checkpoint embeds {cfg.text_num_embeds}"])
    vocab_file = os.path.abspath(args.vocab)
  else:
    notes.append("no --vocab: give the checkpoint's vocab.txt to sample or train (--config.model.vocab_file)")
  return Imported(model={**dataclasses.asdict(cfg), "vocab_file": vocab_file}, params=params,
                  provenance={**provenance, "config": args.config}, notes=notes)


EMBEDDING = "embed.text_embed.embed.embedding"
CHECKPOINT, VOCAB, CONFIG = "model.safetensors", "vocab.txt", "model.yaml"
# The mel that f5-tts' load_model builds its CFM with, whatever the config says (utils_infer's module constants).
F5_MEL = {"target_sample_rate": 24000, "n_mel_channels": 100, "hop_length": 256, "win_length": 1024, "n_fft": 1024,
          "mel_spec_type": "vocos"}


def mel_spec(cfg: DiTConfig) -> dict:
  """The log-mel the dit family trains on (`jaxspeech.dit.family.mel`: `features.log_mel` at its defaults, F5's
  Vocos mel) in F5's `model.mel_spec` names."""
  return {"target_sample_rate": dit_family.SAMPLE_RATE, "n_mel_channels": cfg.mel_dim, "hop_length": dit_family.HOP,
          "win_length": 1024, "n_fft": 1024, "mel_spec_type": "vocos"}


def f5_arch(cfg: DiTConfig) -> dict:
  """F5's `model.arch`: the DiT / UNetT keyword arguments besides mel_dim and text_num_embeds, which load_model
  passes itself (from its mel constants and vocab.txt)."""
  arch = dict(dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, dim_head=cfg.dim_head, ff_mult=cfg.ff_mult,
              text_dim=cfg.text_dim, text_mask_padding=cfg.text_mask_padding, qk_norm=None,
              conv_layers=cfg.conv_layers, pe_attn_head=cfg.rope_heads or None, attn_backend="torch",
              attn_mask_enabled=cfg.key_mask)
  if cfg.backbone == "unett":
    return {**arch, "skip_connect_type": cfg.skip_connect}
  return {**arch, "checkpoint_activations": False}


def f5_config(cfg: DiTConfig, name: str, vocab_path: str) -> dict:
  """An F5 config in the layout of f5_tts/configs/F5TTS_v1_Base.yaml (its `model` section)."""
  return {"model": {"name": name, "tokenizer": "custom", "tokenizer_path": vocab_path,
                    "backbone": "DiT" if cfg.backbone == "dit" else "UNetT", "arch": f5_arch(cfg),
                    "mel_spec": mel_spec(cfg), "vocoder": {"is_local": False, "local_path": None}}}


def export_problems(cfg: DiTConfig, tokens: list[str]) -> list[str]:
  """What load_model with this vocabulary cannot build as our model, one line each, naming the field."""
  problems = [f"{'mel_dim' if k == 'n_mel_channels' else k}={v!r}: f5-tts' load_model builds {k}={F5_MEL[k]!r}"
              for k, v in mel_spec(cfg).items() if v != F5_MEL[k]]
  if len(tokens) > cfg.text_num_embeds:
    problems.append(f"text_num_embeds={cfg.text_num_embeds}: the run's vocabulary has {len(tokens)} tokens")
  bad = sorted({t for t in tokens if tokens.count(t) > 1 or "\n" in t}, key=tokens.index)
  if bad:
    problems.append(f"vocabulary tokens {bad!r}: F5's vocab.txt holds one distinct token per line")
  return problems


def ema_state_dict(params: dict, cfg: DiTConfig, step: int) -> dict[str, np.ndarray]:
  """The `.safetensors` EMA dict f5-tts' load_checkpoint reads."""
  state_dict = {f"ema_model.transformer.{k}": v for k, v in to_f5_state_dict(params, cfg).items()}
  return {**state_dict, "initted": np.asarray(True), "step": np.asarray(step, np.int64)}


def _write_file(dst: str, state_dict: dict) -> None:
  """`state_dict` at `dst`, written to a temporary sibling and renamed."""
  tmp = f"{dst}.converting-{os.getpid()}"
  try:
    safetensors.numpy.save_file(state_dict, tmp)
    os.replace(tmp, dst)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def export_checkpoint(target: str, checkpoint, dst: str, args) -> list[str]:
  """`jaxspeech convert dit --to f5`: a directory f5-tts' load_model reads (model.safetensors, vocab.txt,
  model.yaml), or with a `.safetensors` dst that file alone; staged in a temporary sibling and renamed. A
  distillation workdir exports its student."""
  cfg = config_from(checkpoint.model)
  student = consistency.student_params(checkpoint.params)
  if dst.endswith(".safetensors"):
    state_dict = ema_state_dict(student, cfg, checkpoint.step)
    _write_file(dst, state_dict)
    return [f"{len(state_dict) - 2} tensors as ema_model.transformer.* (+ initted, step) for {cfg.backbone}"]
  tokens = vocab.of_workdir(args.src, {"model": checkpoint.model})
  problems = export_problems(cfg, tokens)
  if problems:
    raise ConversionError(f"workdir model {checkpoint.model} as an f5-tts load_model directory", problems)
  exported = dataclasses.replace(cfg, text_num_embeds=len(tokens))
  params = {**student, EMBEDDING: student[EMBEDDING][:len(tokens) + 1]}
  state_dict = ema_state_dict(params, exported, checkpoint.step)
  name = os.path.basename(os.path.normpath(os.path.abspath(args.src)))
  config = f5_config(exported, name, os.path.join(os.path.abspath(dst), VOCAB))
  with staged(dst) as tmp:
    safetensors.numpy.save_file(state_dict, os.path.join(tmp, CHECKPOINT))
    vocab.write(os.path.join(tmp, VOCAB), tokens)
    with open(os.path.join(tmp, CONFIG), "w") as f:
      yaml.safe_dump(config, f, sort_keys=False)
  return [f"{CHECKPOINT}: {len(state_dict) - 2} tensors as ema_model.transformer.* (+ initted, step)",
          f"{VOCAB}: the run's {len(tokens)} tokens; the text embedding cut from {cfg.text_num_embeds} + 1 rows "
          f"to {len(tokens)} + 1",
          f"{CONFIG}: F5's config layout, backbone {config['model']['backbone']}, mel_spec_type vocos"]
