"""Declarative parameter mappings between jaxspeech `nnx.Param` paths and HF (PyTorch) state-dict keys.

A family's converter lists `Rule`s: our dotted param path (`blocks.{i}.attn.query.kernel`), the HF key
(`layers.{i}.attention.q_proj.weight`), where `{i}` is a layer index, and the `Transform` between the two
layouts. A rule whose `ours` is a tuple maps several of our params to one fused tensor (timm's `attn.qkv`,
see `fused`). `expand` turns the rules into a table keyed by HF key; `from_hf` and `to_hf` move arrays
through it, and any key either side does not account for, or any shape that does not fit, is a
`ConversionError` that names every one of them.
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping
import json
import os

import numpy as np
import safetensors.numpy
from flax import nnx


class ConversionError(ValueError):
  """Checkpoint keys or shapes that do not fit a mapping; `problems` has one line per key."""

  def __init__(self, what: str, problems: Iterable[str], message: str | None = None):
    self.what, self.problems = what, list(problems)
    super().__init__(message or f"{what}: " + "; ".join(self.problems))


@dataclasses.dataclass(frozen=True)
class Transform:
  """Maps one of our arrays to its HF tensor and back; `from_hf` is given the shape of our param."""
  to_hf: Callable[[np.ndarray], np.ndarray]
  from_hf: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


def same_to_hf(x: np.ndarray) -> np.ndarray:
  return x


def same_from_hf(w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return w


def linear_to_hf(kernel_IxO: np.ndarray) -> np.ndarray:
  """A (in, out) kernel as a torch `Linear` weight (out, in)."""
  return kernel_IxO.T


def linear_from_hf(weight_OxI: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return weight_OxI.T


def heads_in_to_hf(kernel_DxHxK: np.ndarray) -> np.ndarray:
  """A q/k/v kernel (D, H, K) as a torch `Linear` weight (H·K, D), head-major rows."""
  return kernel_DxHxK.reshape(kernel_DxHxK.shape[0], -1).T


def heads_in_from_hf(weight_HKxD: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return weight_HKxD.T.reshape(shape)


def heads_out_to_hf(kernel_HxKxD: np.ndarray) -> np.ndarray:
  """An attention output kernel (H, K, D) as a torch `Linear` weight (D, H·K)."""
  return kernel_HxKxD.reshape(-1, kernel_HxKxD.shape[-1]).T


def heads_out_from_hf(weight_DxHK: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return weight_DxHK.T.reshape(shape)


def heads_bias_to_hf(bias_HxK: np.ndarray) -> np.ndarray:
  """A q/k/v bias (H, K) as a torch bias (H·K,)."""
  return bias_HxK.reshape(-1)


def heads_bias_from_hf(bias_HK: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return bias_HK.reshape(shape)


def conv_to_hf(kernel_HxWxIxO: np.ndarray) -> np.ndarray:
  """A Flax conv kernel (HWIO) as a torch `Conv2d` weight (OIHW)."""
  return kernel_HxWxIxO.transpose(3, 2, 0, 1)


def conv_from_hf(weight_OxIxHxW: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return weight_OxIxHxW.transpose(2, 3, 1, 0)


def conv1d_to_torch(kernel_KxIxO: np.ndarray) -> np.ndarray:
  """A Flax Conv1d kernel (K, I/groups, O) as a torch `Conv1d` weight (O, I/groups, K)."""
  return kernel_KxIxO.transpose(2, 1, 0)


def conv1d_from_torch(weight_OxIxK: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  return weight_OxIxK.transpose(2, 1, 0)


def split_qkv(w_3NxM: np.ndarray, parts: int = 3) -> list[np.ndarray]:
  """A fused projection's tensor (q/k/v stacked as row blocks, timm's `attn.qkv`) as its `parts` row blocks."""
  if w_3NxM.shape[0] % parts:
    raise ValueError(f"fused tensor of {w_3NxM.shape[0]} rows does not split into {parts} equal row blocks")
  return np.split(w_3NxM, parts, axis=0)


def fuse_qkv(*blocks: np.ndarray) -> np.ndarray:
  """The row blocks (q, k, v) stacked into one fused tensor; inverts `split_qkv`."""
  return np.concatenate(blocks, axis=0)


def fused(part: Transform, parts: int = 3) -> Transform:
  """A transform between `parts` of our params (a tuple) and one tensor whose row blocks are `part`'s tensors."""
  return Transform(lambda xs: fuse_qkv(*(part.to_hf(x) for x in xs)),
                   lambda w, shapes: tuple(part.from_hf(b, s) for b, s in zip(split_qkv(w, parts), shapes)))


SAME = Transform(same_to_hf, same_from_hf)
LINEAR = Transform(linear_to_hf, linear_from_hf)
HEADS_IN = Transform(heads_in_to_hf, heads_in_from_hf)
HEADS_OUT = Transform(heads_out_to_hf, heads_out_from_hf)
HEADS_BIAS = Transform(heads_bias_to_hf, heads_bias_from_hf)
CONV2D = Transform(conv_to_hf, conv_from_hf)
CONV1D = Transform(conv1d_to_torch, conv1d_from_torch)
QKV_IN = fused(HEADS_IN)       # (3·H·K, D) <-> query, key, value kernels (D, H, K)
QKV_BIAS = fused(HEADS_BIAS)   # (3·H·K,) <-> query, key, value biases (H, K)


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: str | tuple[str, ...]   # a tuple: several params fused into one tensor (with a `fused` transform)
  hf: str
  transform: Transform = SAME


Table = Mapping[str, tuple[str | tuple[str, ...], Transform]]   # HF key -> (our dotted path(s), transform)


def our_paths(table: Table) -> list[str]:
  """Every one of our dotted paths that `table` fills."""
  return [p for ours, _ in table.values() for p in ((ours,) if isinstance(ours, str) else ours)]


def rename_hf(rules: Iterable[Rule], prefixes: Mapping[str, str]) -> list[Rule]:
  """`rules` with each HF key's leading `prefixes` key replaced by its value (e.g. another naming generation)."""
  def rename(key: str) -> str:
    for old, new in prefixes.items():
      if key.startswith(old):
        return new + key[len(old):]
    return key
  return [dataclasses.replace(rule, hf=rename(rule.hf)) for rule in rules]


def expand(rules: Iterable[Rule], layers: int) -> dict[str, tuple[str | tuple[str, ...], Transform]]:
  """The table of `rules`, with each `{i}` rule repeated for i < layers."""
  table = {}
  for rule in rules:
    for i in range(layers) if "{i}" in rule.hf else (0,):
      ours = rule.ours.format(i=i) if isinstance(rule.ours, str) else tuple(o.format(i=i) for o in rule.ours)
      table[rule.hf.format(i=i)] = (ours, rule.transform)
  return table


def closest(tables: Mapping[str, Table], keys: Iterable[str]) -> str:
  """The name of the table whose HF keys overlap `keys` most."""
  keys = set(keys)
  return max(tables, key=lambda name: len(keys & tables[name].keys()))


def check_keys(got: Iterable[str], expected: Iterable[str], what: str) -> None:
  got, expected = set(got), set(expected)
  missing, unexpected = sorted(expected - got), sorted(got - expected)
  if missing or unexpected:
    raise ConversionError(what, [f"missing key {k}" for k in missing] + [f"unexpected key {k}" for k in unexpected],
                          f"{what}: missing keys {missing}, unexpected keys {unexpected}")


def as_numpy(x) -> np.ndarray:
  """A float32 numpy copy of a torch tensor (any float dtype, any device) or array."""
  if hasattr(x, "detach"):
    x = x.detach().cpu().float().numpy()
  return np.array(x, dtype=np.float32)


def param_shapes(state: nnx.State) -> dict[str, tuple[int, ...]]:
  """Dotted path -> shape of every variable in `state` (abstract states from `nnx.eval_shape` work)."""
  return {".".join(map(str, path)): tuple(v.shape) for path, v in nnx.to_flat_state(state)}


def flatten(pure_dict: Mapping) -> dict[str, np.ndarray]:
  """An `nnx.to_pure_dict` tree as dotted path -> float32 numpy array."""
  return {".".join(map(str, path)): as_numpy(x) for path, x in nnx.traversals.flatten_mapping(pure_dict).items()}


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  """Dotted paths back to a nested dict for `nnx.replace_by_pure_dict` (numeric parts become list indices)."""
  def part(p: str) -> str | int:
    return int(p) if p.isdigit() else p
  return nnx.traversals.unflatten_mapping({tuple(map(part, k.split("."))): v for k, v in flat.items()})


def _hf_shape(transform: Transform, ours, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
  """The HF tensor shape our params' shapes imply."""
  if isinstance(ours, str):
    return transform.to_hf(np.zeros(shapes[ours], np.float32)).shape
  return transform.to_hf(tuple(np.zeros(shapes[o], np.float32) for o in ours)).shape


def from_hf(state_dict: Mapping, table: Table, shapes: Mapping[str, tuple[int, ...]],
            what: str) -> dict[str, np.ndarray]:
  """Our dotted path -> array for every entry of `table`; `state_dict` must hold exactly the table's keys.

  A tensor whose shape is not the one our param(s) imply is a `ConversionError` listing every such key.
  """
  check_keys(state_dict, table, what)
  params, problems = {}, []
  for key, (ours, transform) in table.items():
    w = as_numpy(state_dict[key])
    expected = _hf_shape(transform, ours, shapes)
    if w.shape != expected:
      problems.append(f"shape mismatch {key}: {w.shape}, expected {expected} (for {ours})")
      continue
    if isinstance(ours, str):
      params[ours] = np.ascontiguousarray(transform.from_hf(w, shapes[ours]))
    else:
      params.update(zip(ours, map(np.ascontiguousarray, transform.from_hf(w, tuple(shapes[o] for o in ours)))))
  if problems:
    raise ConversionError(what, problems)
  return params


def to_hf(params: Mapping[str, np.ndarray], table: Table, shapes: Mapping[str, tuple[int, ...]],
          what: str) -> dict[str, np.ndarray]:
  """HF key -> array; `params` (dotted paths) must hold exactly the table's paths, in the shapes of `shapes`."""
  check_keys(params, our_paths(table), what)
  arrays = {path: as_numpy(params[path]) for path in our_paths(table)}
  problems = [f"shape mismatch {path}: {x.shape}, expected {shapes[path]}"
              for path, x in arrays.items() if x.shape != shapes[path]]
  if problems:
    raise ConversionError(what, problems)
  return {key: np.ascontiguousarray(transform.to_hf(arrays[ours] if isinstance(ours, str)
                                                    else tuple(arrays[o] for o in ours)))
          for key, (ours, transform) in table.items()}


WEIGHT_INDEX = "model.safetensors.index.json"


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    return safetensors.numpy.load_file(path)
  except Exception as e:  # pylint: disable=broad-except  (truncated or non-safetensors files)
    raise ConversionError(f"cannot read {path}", [f"{type(e).__name__}: {str(e)[:200]}"]) from None


def read_hf_weights(src: str) -> tuple[dict[str, np.ndarray], str]:
  """(HF key -> array, the file read) of model.safetensors or the shards of model.safetensors.index.json."""
  single, index = os.path.join(src, "model.safetensors"), os.path.join(src, WEIGHT_INDEX)
  if os.path.exists(single):
    return _load_safetensors(single), "model.safetensors"
  if os.path.exists(index):
    weight_map = read_json(index)["weight_map"]
    state_dict = {}
    for shard in sorted(set(weight_map.values())):
      state_dict.update(_load_safetensors(os.path.join(src, shard)))
    listed_only = sorted(weight_map.keys() - state_dict.keys())
    if listed_only:
      raise ConversionError(f"{index}", [f"lists {k}, which its shard does not hold" for k in listed_only])
    return state_dict, WEIGHT_INDEX
  raise ConversionError(f"HF directory {src}", [f"has neither model.safetensors nor {WEIGHT_INDEX}"])
