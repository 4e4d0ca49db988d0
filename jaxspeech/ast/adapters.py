"""Parameter-efficient fine-tuning of AST, the methods of PETL-AST (Cappellazzo et al. 2024, arXiv 2312.03694).

`cfg.model.adapter.kind` picks one; the base AST is frozen (the optimizer group "frozen": no update, no
optimizer state) and these train, with the final norm and the head (`norm`, `head_norm`, `head`) in every case:

- "pfeiffer": an adapter at the MLP of every block, with `norm2` (HF's `layernorm_after`);
- "houlsby": adapters at the attention and at the MLP, with `norm1` and `norm2` (`layernorm_before` too);
  the adapter is `block="bottleneck"` (D → D/reduction → GELU → D) or `block="conformer"` (Conformer's
  convolution module as a bottleneck: pointwise → GLU → depthwise conv → LayerNorm → SiLU → pointwise, with a
  LayerNorm in place of the reference's BatchNorm, so there are no batch statistics);
  `mode="sequential"` adapts the sublayer's output y (y + A(y)), `mode="parallel"` reads its input h (y + A(h));
- "lora": W + (alpha / rank)·A·B on the attention projections in `targets` (PETL-AST adapts query and key);
- "prompt": `prompts` learned tokens inserted after the cls and distillation tokens (no positions), dropped
  before the final norm, so the head reads what it reads without them;
- "bitfit": every bias.

Every adapter's last projection (the bottleneck's up-projection, LoRA's B) starts at zero, so the adapted model
computes the base model's function at initialisation (prompt tuning excepted: the prompts are attended to).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.nn import layers

KINDS = ("pfeiffer", "houlsby", "lora", "prompt", "bitfit")
HEAD = ("norm", "head_norm", "head")
# Param-path components of the modules this file adds to an AST.
ADDED = ("attn_adapter", "mlp_adapter", "lora", "prompt")


@dataclasses.dataclass(frozen=True)
class PETLConfig:
  kind: str
  block: str = "bottleneck"     # pfeiffer / houlsby adapter: "bottleneck" or "conformer"
  mode: str = "parallel"        # pfeiffer / houlsby: "sequential" or "parallel"
  reduction: int = 16           # bottleneck width = round(hidden / reduction)
  kernel_size: int = 31         # conformer adapter's depthwise kernel, over the token sequence
  rank: int = 8                 # lora
  alpha: float = 8.0            # lora: the update is scaled by alpha / rank
  targets: tuple[str, ...] = ("query", "key")   # lora: of query, key, value, out
  prompts: int = 8              # prompt tokens

  def __post_init__(self):
    checks = [(self.kind in KINDS, f"kind={self.kind!r}; choose one of {KINDS}"),
              (self.block in ("bottleneck", "conformer"), f"block={self.block!r}; choose bottleneck or conformer"),
              (self.mode in ("sequential", "parallel"), f"mode={self.mode!r}; choose sequential or parallel"),
              (set(self.targets) <= {"query", "key", "value", "out"},
               f"targets={self.targets!r}; choose from query, key, value, out")]
    problems = [message for ok, message in checks if not ok]
    if problems:
      raise ValueError("model.adapter: " + "; ".join(problems))

  def adapts(self, sublayer: str) -> bool:
    """Whether the "attn" or "mlp" sublayer of each block gets a bottleneck / conformer adapter."""
    return self.kind == "houlsby" or (self.kind == "pfeiffer" and sublayer == "mlp")


def from_config(adapter) -> PETLConfig | None:
  """The PETL config of a `cfg.model.adapter` ConfigDict (or dict); None when it is empty or has no kind."""
  fields = dict(adapter or {})
  if not fields.get("kind"):
    return None
  if "targets" in fields:
    fields["targets"] = tuple(fields["targets"])
  return PETLConfig(**fields)


def trainable(kind: str, path: tuple[str, ...]) -> bool:
  """Whether the param at `path` (inside the AST) trains under PETL method `kind`; the rest is frozen."""
  if path[0] in HEAD or any(p in ADDED for p in path):
    return True
  if kind == "bitfit":
    return path[-1] == "bias"
  return len(path) > 1 and path[-2] in {"pfeiffer": ("norm2",), "houlsby": ("norm1", "norm2")}.get(kind, ())


def bottleneck_width(hidden: int, petl: PETLConfig) -> int:
  return max(1, round(hidden / petl.reduction))


class Bottleneck(nnx.Module):
  """D → b → GELU (exact) → D; the up-projection starts at zero."""

  def __init__(self, d: int, petl: PETLConfig, dtype, rngs: nnx.Rngs):
    self.sequential = petl.mode == "sequential"
    b = bottleneck_width(d, petl)
    self.down = layers.dense(d, b, ("embed", None), dtype=dtype, rngs=rngs)
    self.up = layers.dense(b, d, (None, "embed"), dtype=dtype, rngs=rngs, stddev=0.0)

  def __call__(self, h_BxLxD, y_BxLxD):
    """The adapter's addition to sublayer output `y` of input `h`."""
    x_BxLxD = y_BxLxD if self.sequential else h_BxLxD
    return self.up(jax.nn.gelu(self.down(x_BxLxD), approximate=False))


class ConformerAdapter(nnx.Module):
  """Conformer's convolution module (Gulati et al. 2020) at bottleneck width b, as PETL-AST's adapter:
  LN → pointwise D → 2b → GLU → depthwise conv over the tokens → LN → SiLU → pointwise b → D (zero init)."""

  def __init__(self, d: int, petl: PETLConfig, dtype, rngs: nnx.Rngs):
    self.sequential = petl.mode == "sequential"
    b = bottleneck_width(d, petl)
    self.norm_in = layers.layer_norm(d, dtype=dtype, rngs=rngs)
    self.pointwise_in = layers.dense(d, 2 * b, ("embed", None), dtype=dtype, rngs=rngs)
    self.depthwise = nnx.Conv(
        b, b, kernel_size=(petl.kernel_size,), feature_group_count=b, padding="SAME", dtype=dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, None)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (None,)))
    self.norm_mid = layers.layer_norm(b, dtype=dtype, rngs=rngs)
    self.pointwise_out = layers.dense(b, d, (None, "embed"), dtype=dtype, rngs=rngs, stddev=0.0)

  def __call__(self, h_BxLxD, y_BxLxD):
    x_BxLxD = y_BxLxD if self.sequential else h_BxLxD
    g_BxLxB = jax.nn.glu(self.pointwise_in(self.norm_in(x_BxLxD)), axis=-1)
    c_BxLxB = jax.nn.silu(self.norm_mid(self.depthwise(g_BxLxB)))
    return self.pointwise_out(c_BxLxB)


def sublayer_adapter(petl: PETLConfig | None, sublayer: str, d: int, dtype, rngs: nnx.Rngs):
  """The adapter of a block's "attn" or "mlp" sublayer, or None."""
  if petl is None or not petl.adapts(sublayer):
    return None
  return (ConformerAdapter if petl.block == "conformer" else Bottleneck)(d, petl, dtype, rngs)


class LoRA(nnx.Module):
  """The low-rank update (alpha / r)·x·A·B of a linear map with kernel `in_shape + out_shape`; B starts at zero."""

  def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], axes: tuple, petl: PETLConfig,
               dtype, rngs: nnx.Rngs):
    n = len(in_shape)
    self.scale = petl.alpha / petl.rank
    self.a = layers.dense(in_shape, petl.rank, tuple(axes[:n]) + (None,), dtype=dtype, rngs=rngs, use_bias=False,
                          stddev=float(np.prod(in_shape)) ** -0.5)
    self.b = layers.dense(petl.rank, out_shape, (None,) + tuple(axes[n:]), dtype=dtype, rngs=rngs, use_bias=False,
                          stddev=0.0)

  def __call__(self, x):
    return self.scale * self.b(self.a(x))


def lora_modules(petl: PETLConfig | None, shapes: dict[str, tuple], dtype, rngs: nnx.Rngs) -> nnx.Dict | None:
  """{target: LoRA} for the attention projections; `shapes` maps a projection to (in, out, axes)."""
  if petl is None or petl.kind != "lora":
    return None
  return nnx.Dict({name: LoRA(*shapes[name], petl, dtype, rngs) for name in petl.targets})


def prompt_tokens(petl: PETLConfig | None, d: int, patch_area: int, rngs: nnx.Rngs) -> nnx.Param | None:
  """(1, P, D) prompt embeddings, uniform in ±sqrt(6 / (3·patch area + D)) as VPT and PETL-AST draw them."""
  if petl is None or petl.kind != "prompt":
    return None
  bound = (6.0 / (3 * patch_area + d)) ** 0.5
  init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
  return nnx.Param(nnx.with_partitioning(init, (None, None, "embed"))(rngs.params(), (1, petl.prompts, d)))


def merge_lora(params: dict, petl: PETLConfig) -> dict:
  """Base AST params (a pure dict) with every LoRA update added into its kernel and the LoRA params removed."""
  merged = jax.tree.map(lambda x: x, params)  # new dicts, the same arrays
  scale = petl.alpha / petl.rank
  for block in merged["blocks"].values():
    attn = block["attn"]
    for name, lora in attn.pop("lora").items():
      attn[name]["kernel"] = attn[name]["kernel"] + scale * np.tensordot(lora["a"]["kernel"], lora["b"]["kernel"], 1)
  return merged


def base_params(params: dict, petl: PETLConfig) -> dict:
  """The plain AST params (a pure dict) of a `PETLAST`'s: BitFit's as they are, LoRA's merged into the kernels.
  The other methods add modules that a plain AST (and HF's) does not have: ValueError."""
  if petl.kind not in ("lora", "bitfit"):
    raise ValueError(f"a {petl.kind} run adds modules a plain AST does not have; only BitFit and LoRA (merged) "
                     "runs are plain ASTs")
  return merge_lora(params[petl.kind], petl) if petl.kind == "lora" else params[petl.kind]
