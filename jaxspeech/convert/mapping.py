"""Declarative parameter mappings between jaxspeech `nnx.Param` paths and HF (PyTorch) state-dict keys.

A family's converter lists `Rule`s: our dotted param path (`blocks.{i}.attn.query.kernel`), the HF key
(`layers.{i}.attention.q_proj.weight`), where `{i}` is a layer index, and the `Transform` between the two
layouts. `expand` turns the rules into a table keyed by HF key; `from_hf` and `to_hf` move arrays through
it, and any key either side does not account for is an error that names it.
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from flax import nnx


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


SAME = Transform(same_to_hf, same_from_hf)
LINEAR = Transform(linear_to_hf, linear_from_hf)
HEADS_IN = Transform(heads_in_to_hf, heads_in_from_hf)
HEADS_OUT = Transform(heads_out_to_hf, heads_out_from_hf)
HEADS_BIAS = Transform(heads_bias_to_hf, heads_bias_from_hf)
CONV2D = Transform(conv_to_hf, conv_from_hf)


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: str
  hf: str
  transform: Transform = SAME


Table = Mapping[str, tuple[str, Transform]]   # HF key -> (our dotted path, transform)


def rename_hf(rules: Iterable[Rule], prefixes: Mapping[str, str]) -> list[Rule]:
  """`rules` with each HF key's leading `prefixes` key replaced by its value (e.g. another naming generation)."""
  def rename(key: str) -> str:
    for old, new in prefixes.items():
      if key.startswith(old):
        return new + key[len(old):]
    return key
  return [dataclasses.replace(rule, hf=rename(rule.hf)) for rule in rules]


def expand(rules: Iterable[Rule], layers: int) -> dict[str, tuple[str, Transform]]:
  """The table of `rules`, with each `{i}` rule repeated for i < layers."""
  table = {}
  for rule in rules:
    for i in range(layers) if "{i}" in rule.hf else (0,):
      table[rule.hf.format(i=i)] = (rule.ours.format(i=i), rule.transform)
  return table


def closest(tables: Mapping[str, Table], keys: Iterable[str]) -> str:
  """The name of the table whose HF keys overlap `keys` most."""
  keys = set(keys)
  return max(tables, key=lambda name: len(keys & tables[name].keys()))


def check_keys(got: Iterable[str], expected: Iterable[str], what: str) -> None:
  got, expected = set(got), set(expected)
  missing, unexpected = sorted(expected - got), sorted(got - expected)
  if missing or unexpected:
    raise ValueError(f"{what}: missing keys {missing}, unexpected keys {unexpected}")


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


def _check_shape(x: np.ndarray, shape: tuple[int, ...], key: str) -> np.ndarray:
  if x.shape != shape:
    raise ValueError(f"{key}: shape {x.shape}, expected {shape}")
  return x


def from_hf(state_dict: Mapping, table: Table, shapes: Mapping[str, tuple[int, ...]],
            what: str) -> dict[str, np.ndarray]:
  """Our dotted path -> array for every entry of `table`; `state_dict` must hold exactly the table's keys."""
  check_keys(state_dict, table, what)
  params = {}
  for key, (ours, transform) in table.items():
    params[ours] = _check_shape(np.ascontiguousarray(transform.from_hf(as_numpy(state_dict[key]), shapes[ours])),
                                shapes[ours], f"{key} -> {ours}")
  return params


def to_hf(params: Mapping[str, np.ndarray], table: Table, shapes: Mapping[str, tuple[int, ...]],
          what: str) -> dict[str, np.ndarray]:
  """HF key -> array; `params` (dotted paths) must hold exactly the table's paths, in the shapes of `shapes`."""
  check_keys(params, [ours for ours, _ in table.values()], what)
  return {key: np.ascontiguousarray(transform.to_hf(_check_shape(as_numpy(params[ours]), shapes[ours], ours)))
          for key, (ours, transform) in table.items()}
