"""Builds the (data, fsdp, tensor, sequence) mesh; `dcn_*` sizes span slices over the data-centre network."""

from collections.abc import Mapping, Sequence
import math

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor", "sequence")


def fill_sizes(sizes: Sequence[int], total: int, what: str) -> tuple[int, ...]:
  """Replaces a single -1 with whatever makes the product equal `total`."""
  sizes = tuple(int(s) for s in sizes)
  if sizes.count(-1) > 1:
    raise ValueError(f"{what}: at most one axis may be -1, got {sizes}")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or total % known:
    raise ValueError(f"{what}: axis sizes {dict(zip(MESH_AXES, sizes))} do not divide {total} devices")
  sizes = tuple(total // known if s == -1 else s for s in sizes)
  if math.prod(sizes) != total:
    raise ValueError(f"{what}: axis sizes {dict(zip(MESH_AXES, sizes))} use {math.prod(sizes)} of {total} devices")
  return sizes


def make_mesh(cfg: Mapping, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """`cfg` maps axis names to sizes (-1 = the rest), and optionally `dcn_<axis>` to slice counts."""
  devices = list(jax.devices() if devices is None else devices)
  unknown = set(cfg) - set(MESH_AXES) - {f"dcn_{a}" for a in MESH_AXES}
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; axes are {MESH_AXES} and dcn_<axis>")
  dcn = tuple(int(cfg.get(f"dcn_{a}", 1)) for a in MESH_AXES)
  num_slices = math.prod(dcn)
  if len(devices) % num_slices:
    raise ValueError(f"{len(devices)} devices cannot form {num_slices} slices (dcn sizes {dcn})")
  ici = fill_sizes([cfg.get(a, 1) for a in MESH_AXES], len(devices) // num_slices, "mesh")
  if num_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  else:
    grid = mesh_utils.create_device_mesh(ici, devices)
  # Auto axes: shardings come from rules and constraints, not from types (make_mesh defaults to Explicit).
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
