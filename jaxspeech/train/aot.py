"""Ahead-of-time compilation for TPU pods on any host, and what the TPU compiler says of the result.

`compile_for(jitted, args)` compiles for the devices the arguments' shardings name (virtual TPU devices from
`topology.devices`) and returns a `Compiled`: XLA's per-chip memory, the cost model's FLOPs and step time, and
the bytes each kind of collective moves, read from the optimised HLO. An out-of-memory compile is caught and
reported as the bytes it was over, not raised.

The cost model's traps, so the figures are honest:
- it counts a while-loop body once, not once per trip: FLOPs and time come from a compile without loops
  (layers unrolled, one microbatch: `cost_config`), and `Compiled.loops` counts the loops that remain;
- XLA's windowed einsums (≥ 8 chips) are loops too: cost compiles turn them off (`COST_OPTIONS`);
- Pallas kernels (splash attention) are priced by the bytes they move, not their FLOPs;
- v6e step times come out negative with this libtpu: they are reported as missing.
The step time is the compiler's estimate (a model of the chip), not a measurement.
"""

import dataclasses
import re

import jax

# Cost compiles only: no windowed-einsum loops, whose bodies the cost model would count once.
COST_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", re.M)
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
# the TPU compiler's two ways of saying it: "... (64.00G) exceeds available HBM (15.75G)", "Used 120.5G of 95.7G hbm"
_OOM = (re.compile(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"),
        re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm"))
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass
class Compiled:
  """Per-chip figures of one compiled program (bytes, FLOPs, seconds)."""
  argument: int = 0
  output: int = 0
  alias: int = 0
  temp: int = 0
  flops: float = 0.0
  seconds: float | None = None      # the cost model's `optimal_seconds`; None where it is negative
  bytes_accessed: float = 0.0
  collectives: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(COLLECTIVES, 0))
  loops: int = 0                    # while loops left in the program (each counted once by the cost model)
  over_bytes: int = 0               # > 0: the compile ran out of HBM by this much
  executable: object = None         # the jax Compiled (for --save-executable); None when it did not fit

  @property
  def peak(self) -> int:
    """Bytes live at once: arguments, outputs not aliased to them, and temporaries."""
    return self.argument + self.output - self.alias + self.temp

  @property
  def fits(self) -> bool:
    return self.over_bytes == 0


def collective_bytes(hlo: str) -> dict[str, int]:
  """Result bytes per chip of each kind of collective in an optimised HLO module (async starts counted once, by
  their result; a loop body's collectives once)."""
  out = dict.fromkeys(COLLECTIVES, 0)
  for result, kind, start in _OP.findall(hlo):
    sizes = [_DTYPE_BYTES[d] * _prod(dims) for d, dims in _SHAPE.findall(result)]
    if sizes:
      out[kind] += sizes[-1] if start else sum(sizes)
  return out


def _prod(dims: str) -> int:
  n = 1
  for d in filter(None, dims.split(",")):
    n *= int(d)
  return n


def over_capacity(message: str) -> int:
  """Bytes by which an out-of-memory compile exceeded HBM, from the TPU compiler's error; 0 if it is not one."""
  for pattern in _OOM:
    match = pattern.search(message)
    if match:
      need, unit, have, have_unit = match.groups()
      return max(int(float(need) * _UNITS[unit] - float(have) * _UNITS[have_unit]), 1)
  return 0


def compile_for(jitted, args, *, cost: bool = False) -> Compiled:
  """Compiles `jitted` for `args` (abstract, sharded over the target devices); `cost` turns windowed einsums
  off, as cost runs need. Out of HBM: a `Compiled` with `over_bytes` set and nothing else."""
  lowered = jitted.lower(*args)
  try:
    compiled = lowered.compile(compiler_options=COST_OPTIONS if cost else None)
  except jax.errors.JaxRuntimeError as e:
    over = over_capacity(str(e))
    if not over:
      raise
    return Compiled(over_bytes=over)
  memory, analysis = compiled.memory_analysis(), compiled.cost_analysis() or {}
  hlo = compiled.as_text()
  seconds = float(analysis.get("optimal_seconds", -1.0))
  return Compiled(argument=memory.argument_size_in_bytes, output=memory.output_size_in_bytes,
                  alias=memory.alias_size_in_bytes, temp=memory.temp_size_in_bytes,
                  flops=float(analysis.get("flops", 0.0)), seconds=seconds if seconds > 0 else None,
                  bytes_accessed=float(analysis.get("bytes accessed", 0.0)), collectives=collective_bytes(hlo),
                  loops=len(re.findall(r"\swhile\(", hlo)), executable=compiled)
