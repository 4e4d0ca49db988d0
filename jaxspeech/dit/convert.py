"""F5-TTS checkpoints in and out of dit workdirs. `jaxspeech convert dit` runs the functions at the end.

    jaxspeech convert dit --from f5 --src model_1250000.safetensors --dst WORKDIR [--config=configs/dit.py:base
        --config.model.heads=16 ...] [--vocab vocab.txt]
    jaxspeech convert dit --to f5 --src WORKDIR --dst model.safetensors

F5 checkpoints (`.pt`: `ema_model_state_dict` with `ema_model.transformer.*` keys plus `initted`/`step`, or
`model_state_dict` with `transformer.*`; `.safetensors`: the EMA dict) do not record the model config, so
the import takes one (`configs/dit.py:<size>` plus overrides) and checks every tensor's shape against it.
Export writes the `.safetensors` EMA dict that f5-tts' `load_checkpoint` reads.

`rotary_embed.inv_freq` is a buffer, not a param: import checks it against the config's head size, export
writes it. Conv1d weights (O, I/groups, K) become Flax kernels (K, I/groups, O); the AdaLN Linears' output
chunks (shift, scale, gate, ...) become a leading chunk axis of our kernel.
"""

import os

import numpy as np
from flax import nnx

from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, ConversionError, Rule, Transform
from jaxspeech.dit import modules
from jaxspeech.dit.model import DiTConfig, build


def conv1d_to_f5(kernel_KxIxO: np.ndarray) -> np.ndarray:
  """A Flax Conv1d kernel (K, I/groups, O) as a torch Conv1d weight (O, I/groups, K)."""
  return kernel_KxIxO.transpose(2, 1, 0)


def conv1d_from_f5(weight_OxIxK: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return weight_OxIxK.transpose(2, 1, 0)


def grn_to_f5(x_H: np.ndarray) -> np.ndarray:
  """A GRN γ or β (H,) as F5's (1, 1, H)."""
  return x_H.reshape(1, 1, -1)


def grn_from_f5(x_1x1xH: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return x_1x1xH.reshape(shape)


CONV1D = Transform(conv1d_to_f5, conv1d_from_f5)
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

  Missing, unexpected and misshaped keys raise one ConversionError listing them all.
  """
  state_dict = dict(state_dict)
  problems = []
  if ROPE_BUFFER in state_dict:
    inv_freq = mapping.as_numpy(state_dict.pop(ROPE_BUFFER))
    if inv_freq.shape != rope_buffer(cfg).shape or not np.allclose(inv_freq, rope_buffer(cfg), rtol=1e-6):
      problems.append(f"{ROPE_BUFFER} {inv_freq.shape} is not RoPE's for dim_head={cfg.dim_head}")
  else:
    problems.append(f"missing key {ROPE_BUFFER}")
  try:
    params = mapping.from_hf(state_dict, table(cfg), param_shapes(cfg), what)
  except ConversionError as e:
    problems += e.problems
  if problems:
    raise ConversionError(f"{what} for {cfg}", problems)
  return params


def to_f5_state_dict(params, cfg: DiTConfig) -> dict[str, np.ndarray]:
  """A bare `DiT`/`UNetT` state dict (float32 numpy) of our dotted params, with the RoPE buffer."""
  state_dict = mapping.to_hf(params, table(cfg), param_shapes(cfg), f"dit params for {cfg}")
  return {**state_dict, ROPE_BUFFER: rope_buffer(cfg)}
