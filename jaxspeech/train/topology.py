"""TPU topologies by name, as virtual devices for ahead-of-time compilation on any host (no TPU needed).

Two spellings are accepted:
- gcloud's accelerator types: `v5p-128`, `v4-32` (TensorCores: 2 per chip), `v5litepod-16` or `v5e-16` and
  `v6e-16` (chips);
- topology strings, chips per dimension: `v5p:4x4x8`, `v4:2x2x1`, `v5e:4x4`, `v6e:2x4`.

`devices(name, num_slices)` asks libtpu (`pip install '.[tpu]'`) for that many slices of the topology; the
devices carry their `slice_index`, so `sharding.make_mesh` lays `dcn_*` axes across slices as on the pod.
"""

import dataclasses
import math
import os
import re

from jax.experimental import topologies

# chip: (HBM GiB per chip, dense bf16 peak FLOP/s per chip, HBM bytes/s per chip, TensorCores counted per chip
# by gcloud's names, dimensions of a slice's chip grid); Google Cloud's published figures
CHIPS = {
    "v4": (32.0, 275e12, 1228e9, 2, 3),
    "v5p": (95.0, 459e12, 2765e9, 2, 3),
    "v5e": (16.0, 197e12, 819e9, 1, 2),
    "v6e": (32.0, 918e12, 1640e9, 1, 2),
}
ALIASES = {"v5litepod": "v5e"}
MAX_CHIPS = {"v4": 4096, "v5p": 8960, "v5e": 256, "v6e": 256}
INSTALL = "libtpu is not installed: pip install 'jaxspeech[tpu]' (or, in a checkout, pip install -e '.[tpu]')"


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: str                   # v4, v5p, v5e or v6e
  shape: tuple[int, ...]      # chips per dimension of one slice
  num_slices: int = 1

  @property
  def chips_per_slice(self) -> int:
    return math.prod(self.shape)

  @property
  def chips(self) -> int:
    return self.chips_per_slice * self.num_slices

  @property
  def hbm_gib(self) -> float:
    return CHIPS[self.chip][0]

  @property
  def peak_flops(self) -> float:
    return CHIPS[self.chip][1]

  @property
  def hbm_bandwidth(self) -> float:
    return CHIPS[self.chip][2]

  @property
  def name(self) -> str:
    slices = f" × {self.num_slices} slices" if self.num_slices > 1 else ""
    return f"{self.chip}:{'x'.join(map(str, self.shape))}{slices}"


def _grid(chips: int, dims: int) -> tuple[int, ...]:
  """The slice shape of `chips` (a power of two): as even as possible, smallest dimensions first
  (v5p-128 → 4x4x4, v5p-256 → 4x4x8, v5e-32 → 4x8; four chips are 2x2x1, as gcloud's smallest 3-D slice)."""
  shape = [1] * dims
  for i in range(int(math.log2(chips))):
    shape[i % dims] *= 2
  return (2, 2, 1) if dims == 3 and chips == 4 else tuple(sorted(shape))


def parse(name: str, num_slices: int = 1) -> Topology:
  """A `Topology` from gcloud's accelerator type or a topology string; ValueError naming what is wrong."""
  text = name.strip().lower()
  if num_slices < 1:
    raise ValueError(f"--num-slices must be at least 1, got {num_slices}")
  match = re.fullmatch(r"([a-z0-9]+)(?::([0-9x]+)|-(\d+))", text)
  if not match:
    raise ValueError(f"unknown topology {name!r}: give gcloud's accelerator type (v5p-128, v5litepod-16, v6e-16, "
                     "v4-32) or chips per dimension (v5p:4x4x8, v5e:4x4)")
  chip, grid, count = match.groups()
  chip = ALIASES.get(chip, chip)
  if chip not in CHIPS:
    raise ValueError(f"unknown TPU chip {match.group(1)!r} in {name!r}; chips are {', '.join(CHIPS)} (v5litepod = v5e)")
  *_, cores, dims = CHIPS[chip]
  if grid is not None:
    shape = tuple(int(d) for d in grid.split("x"))
    if len(shape) != dims or 0 in shape:
      raise ValueError(f"{name!r}: a {chip} slice has {dims} dimensions of chips, e.g. "
                       f"{chip}:{'x'.join(['2'] * dims)}")
  else:
    n = int(count)
    if n % cores or n // cores < cores ** 2 or (n // cores) & (n // cores - 1):
      unit = "TensorCores (2 per chip)" if cores == 2 else "chips"
      raise ValueError(f"{name!r}: gcloud's {chip} sizes count {unit}, a power of two"
                       + (" of at least 8" if cores == 2 else ""))
    shape = _grid(n // cores, dims)
  topology = Topology(chip, shape, num_slices)
  if topology.chips_per_slice > MAX_CHIPS[chip]:
    raise ValueError(f"{name!r}: a {chip} slice has at most {MAX_CHIPS[chip]} chips")
  return topology


def devices(topology: Topology) -> list:
  """Compile-only devices of every slice of `topology` (libtpu's view of the pod)."""
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (the optional [tpu] extra)
  except ImportError as e:
    raise RuntimeError(INSTALL) from e
  # libtpu takes a machine-wide lock on first load; compile-only use needs no TPU, so planners may run side by side
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  shape = "x".join(map(str, topology.shape))
  options = {"chip_config_name": "megacore"} if topology.chip == "v4" else {}
  if min(topology.shape[:2]) < 2:  # smaller than libtpu's default host (2x2x1 chips)
    options["chips_per_host_bounds"] = (*(min(d, 2) for d in topology.shape[:2]), 1)
  desc = topologies.get_topology_desc(topology_name=f"{topology.chip}:{shape}", platform="tpu",
                                      num_slices=topology.num_slices, **options)
  return list(desc.devices)
