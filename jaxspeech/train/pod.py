"""`jaxspeech plan --topology`: the trainer's programs compiled by the TPU compiler for a pod, on any host.

  jaxspeech plan --config=configs/presets.py:llasa_1b_v5p64 --topology v5p-128 [--num-slices 2] [--json]

Each program is compiled twice for virtual devices of the topology (`topology.devices`):
- as it runs (layers scanned, gradient accumulation, windowed einsums): its per-chip memory and whether it fits;
- without loops (layers unrolled, one microbatch, no windowed einsums: `cost_config`): the cost model's FLOPs,
  step time and collective bytes, since it counts a loop body once. The step is then accumulation × one
  microbatch's forward and backward plus one optimizer update (compiled alone, `_update_cost`).
With `extrapolate`, the loop-free compile is made at 1 and 2 layers and each figure extrapolated linearly to the
model's depth (every layer is the same program): minutes instead of tens of minutes for a deep model, and
tests/test_tpu_aot.py holds it to the full unrolled compile.
Estimated MFU is the family's analytic `train_flops` (causal attention counted as half the square) over
chips × bf16 peak × the estimated step time. Every time and MFU here
is the compiler's estimate, a model of the chip, not a measurement.
"""

import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxspeech import sharding
from jaxspeech.train import aot, state as state_lib, step as step_lib, topology as topology_lib, trainer

GIB = 2.0**30


@dataclasses.dataclass
class Program:
  """Per-chip figures of one program: memory from the real compile, cost from the loop-free one."""
  name: str
  state: int              # bytes of arguments (train state and batch)
  temp: int
  peak: int
  over: int               # > 0: does not fit by this many bytes
  flops: float            # compiler FLOPs per chip per step (all microbatches)
  seconds: float | None   # estimated step time; None where the cost model gives none (v6e)
  bytes_accessed: float   # compiler's HBM bytes per chip per step
  collectives: dict[str, int]
  loops: int              # loops left in the cost compile (their bodies counted once)


@dataclasses.dataclass
class PodPlan:
  family: str
  topology: str
  chips: int
  hbm_gib: float
  peak_flops: float
  hbm_bandwidth: float
  mesh: dict[str, int]
  params: int
  train_flops: float      # analytic, per global batch
  unit: str               # what `units_per_step` counts (tokens, frames, samples)
  units_per_step: float
  programs: list[Program]
  extrapolated: bool = False  # the train step's cost from 1- and 2-layer compiles (`measure(extrapolate=True)`)

  @property
  def train(self) -> Program:
    return self.programs[0]

  def mfu(self, program: Program) -> float | None:
    if program.seconds is None or program is not self.train:
      return None
    return self.train_flops / (self.chips * self.peak_flops * program.seconds)

  def roofline(self, program: Program) -> float:
    """Seconds at the chip's peak rates for the compiler's FLOPs and HBM bytes: a lower bound on the step, the
    time figure left where the cost model gives none."""
    return max(program.flops / self.peak_flops, program.bytes_accessed / self.hbm_bandwidth)


def cost_config(cfg):
  """`cfg` without the loops the cost model undercounts: layers unrolled, one microbatch of the global batch,
  the head's cross-entropy in one piece."""
  cfg = cfg.copy_and_resolve_references()
  if "scan_layers" in cfg.model:
    cfg.model.scan_layers = False
  accum = int(cfg.optim.accum_steps)
  cfg.train.batch_size //= accum
  cfg.optim.accum_steps = 1
  if "frame_budget" in cfg.data:
    cfg.data.frame_budget //= accum
  if "llasa" in cfg and cfg.llasa.get("loss_chunk"):
    cfg.llasa.loss_chunk = 0
  return cfg


def depth_key(cfg) -> str | None:
  """The model config's layer count field (`layers` or `depth`), None for a family without one."""
  return next((k for k in ("layers", "depth") if k in cfg.model), None)


def at_depth(cfg, layers: int):
  cfg = cfg.copy_and_resolve_references()
  cfg.model[depth_key(cfg)] = layers
  return cfg


def extrapolated(one: aot.Compiled, two: aot.Compiled, layers: int) -> aot.Compiled:
  """A loop-free compile's figures at `layers` layers from its compiles at 1 and 2: one + (layers − 1) × (two − one)."""
  line = lambda a, b: a + (layers - 1) * (b - a)  # noqa: E731
  seconds = None if one.seconds is None or two.seconds is None else line(one.seconds, two.seconds)
  return aot.Compiled(flops=line(one.flops, two.flops), seconds=seconds,
                      bytes_accessed=line(one.bytes_accessed, two.bytes_accessed),
                      collectives={k: line(one.collectives[k], two.collectives[k]) for k in one.collectives},
                      loops=max(one.loops, two.loops))


def _cost_compile(run) -> aot.Compiled:
  _, batch = _abstract_batch(run, run.cfg)
  with sharding.use_rules(run.mesh, run.rules):
    return aot.compile_for(run.train_step, (run.target, batch), cost=True)


def full_batch(shapes: dict) -> dict[str, np.ndarray]:
  """A host batch of these shapes with every row whole (valid, lengths at the padded size, one segment), for
  the family's `units`."""
  out = {}
  for name, spec in shapes.items():
    base = name.removesuffix("_lengths")
    fill = shapes[base].shape[1] if base != name and base in shapes else 1
    out[name] = np.full(spec.shape, fill, spec.dtype)
  return out


def _abstract_batch(run, cfg):
  with sharding.use_rules(run.mesh, run.rules):
    shapes = state_lib.batch_shapes(run.family, cfg)
  return shapes, {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=run.batch_shardings[k])
                  for k, v in shapes.items() if k in run.batch_shardings}


def measure(cfg, topology: topology_lib.Topology, mesh: dict[str, int], keep_executable: bool = False,
            inference: bool = True, extrapolate: bool = False) -> tuple[PodPlan, object]:
  """(the plan, the compiled train step as it runs, or None) for `cfg` on `mesh` over the pod's chips; with
  `inference`, the family's inference programs too; with `extrapolate`, the train step's cost from 1- and 2-layer
  compiles (families with a layer count)."""
  devices = topology_lib.devices(topology)
  cfg = cfg.copy_and_resolve_references()
  cfg.mesh.update(mesh)
  cfg.train.compilation_cache = ""  # compile-only TPU executables cannot be read back from it
  run = trainer.Trainer(cfg, workdir="", devices=devices)
  shapes, batch = _abstract_batch(run, cfg)
  with sharding.use_rules(run.mesh, run.rules):
    real = aot.compile_for(run.train_step, (run.target, batch))
  accum = int(cfg.optim.accum_steps)
  cheap = cost_config(cfg)
  depth = depth_key(cheap)
  loop_free = real.fits and real.loops == 0 and cheap == cfg
  shallow = extrapolate and not loop_free and depth is not None and cheap.model[depth] > 2
  if loop_free:
    cost, cost_run = real, run  # no loop (windowed einsums are loops too): nothing the cost model undercounts
  else:
    cost_run = trainer.Trainer(cheap, workdir="", devices=devices)
    if shallow:
      one, two = (_cost_compile(trainer.Trainer(at_depth(cheap, n), workdir="", devices=devices)) for n in (1, 2))
      cost = extrapolated(one, two, cheap.model[depth])
    else:
      cost = _cost_compile(cost_run)
  once = _update_cost(cost_run) if accum > 1 else aot.Compiled(seconds=0.0)
  def per_step(microbatch, update):  # the microbatches' forward and backward `accum` times, the update once
    return accum * (microbatch - update) + update
  seconds = None if cost.seconds is None or once.seconds is None else per_step(cost.seconds, once.seconds)
  train = Program(name="train step", state=real.argument, temp=real.temp, peak=real.peak, over=real.over_bytes,
                  flops=per_step(cost.flops, once.flops), seconds=seconds,
                  bytes_accessed=per_step(cost.bytes_accessed, once.bytes_accessed),
                  collectives={k: per_step(v, once.collectives[k]) for k, v in cost.collectives.items()},
                  loops=cost.loops)
  programs = [train]
  if inference and run.family.inference is not None:
    with sharding.use_rules(cost_run.mesh, cost_run.rules):  # shapes that split over the mesh's rows
      programs += inference_programs(cost_run, run.family.inference(cheap))
  units = run.family.units(full_batch(shapes))
  unit = list(units)[-1]
  pod = PodPlan(family=cfg.family, topology=topology.name, chips=topology.chips, hbm_gib=topology.hbm_gib,
                peak_flops=topology.peak_flops, hbm_bandwidth=topology.hbm_bandwidth,
                mesh={k: int(v) for k, v in run.mesh.shape.items()},
                params=state_lib.param_count(run.target.params), train_flops=run.flops_per_step, unit=unit,
                units_per_step=units[unit], programs=programs, extrapolated=shallow)
  return pod, real.executable if keep_executable else None


def _update_cost(run) -> aot.Compiled:
  """The optimizer and EMA step alone, compiled as the train step holds its state, for a cost compile of one
  microbatch's train step to be scaled to `accum` microbatches without scaling the update too."""
  update = step_lib.make_update(run.cfg, run.tx)
  grads = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), run.target.params)
  jitted = jax.jit(update, in_shardings=(run.shardings, run.shardings.params),
                   out_shardings=(run.shardings.params, run.shardings.opt_state, run.shardings.ema))
  with sharding.use_rules(run.mesh, run.rules):
    return aot.compile_for(jitted, (run.target, grads), cost=True)


def _is_axes(x) -> bool:
  return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def inference_programs(run, programs: dict[str, tuple]) -> list[Program]:
  """Each of the family's inference programs compiled once, loop-free (layers unrolled as in the cost config),
  over the train state's params as the trainer holds them; its inputs are donated, as a decode loop donates
  its cache."""
  out = []
  with sharding.use_rules(run.mesh, run.rules):
    for name, (fn, inputs, axes) in programs.items():
      shardings = jax.tree.map(lambda a: NamedSharding(run.mesh, sharding.logical_spec(a)), axes, is_leaf=_is_axes)
      args = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), inputs, shardings)
      graphdef = run.graphdef

      def program(params, rest, inputs, fn=fn):
        return fn(nnx.merge(graphdef, params, rest), **inputs)

      jitted = jax.jit(program, in_shardings=(run.shardings.params, run.shardings.rest, shardings),
                       donate_argnums=2)
      c = aot.compile_for(jitted, (run.target.params, run.target.rest, args), cost=True)
      out.append(Program(name=name, state=c.argument, temp=c.temp, peak=c.peak, over=c.over_bytes, flops=c.flops,
                         seconds=c.seconds, bytes_accessed=c.bytes_accessed, collectives=c.collectives,
                         loops=c.loops))
  return out


def _gib(n: float) -> str:
  return f"{n / GIB:.2f}"


def report(pod: PodPlan) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in pod.mesh.items())
  lines = [f"{pod.family} on {pod.topology} ({pod.chips} chips, {pod.hbm_gib:g} GiB HBM and "
           f"{pod.peak_flops / 1e12:.0f} TFLOP/s bf16 each), mesh {mesh}; {pod.params:,} parameters",
           "per chip; times and MFU are the TPU compiler's estimates (its cost model), not measurements",
           "| program | fits? | state GiB | temp GiB | peak GiB | compiler TFLOP | analytic TFLOP | est. step ms | "
           f"est. {pod.unit}/s | est. MFU | roofline ms | all-gather GiB | reduce-scatter GiB | all-reduce GiB |",
           "| --- " * 14 + "|"]
  for p in pod.programs:
    fits = "yes" if not p.over else f"NO: by {_gib(p.over)} GiB"
    analytic = f"{pod.train_flops / pod.chips / 1e12:.3g}" if p is pod.train else "-"
    ms = "n/a" if p.seconds is None else f"{p.seconds * 1e3:.4g}"
    rate = "n/a" if p.seconds is None or p is not pod.train else f"{pod.units_per_step / pod.chips / p.seconds:,.0f}"
    mfu = pod.mfu(p)
    lines.append(f"| {p.name} | {fits} | {_gib(p.state)} | {_gib(p.temp)} | {_gib(p.peak)} | {p.flops / 1e12:.3g} | "
                 f"{analytic} | {ms} | {rate} | {'n/a' if mfu is None else f'{mfu:.1%}'} | "
                 f"{pod.roofline(p) * 1e3:.4g} | "
                 f"{_gib(p.collectives['all-gather'])} | {_gib(p.collectives['reduce-scatter'])} | "
                 f"{_gib(p.collectives['all-reduce'])} |")
  if any(p.seconds is None for p in pod.programs):
    lines.append("n/a: this libtpu's cost model gives a negative step time here (always on v6e); the roofline "
                 "column (the compiler's FLOPs and HBM bytes at the chip's peak rates) is a lower bound")
  if pod.extrapolated:
    lines.append("the train step's FLOPs, time and collectives: its 1- and 2-layer loop-free compiles, extrapolated "
                 "linearly to the model's depth (--extrapolate)")
  if any(p.loops for p in pod.programs):
    lines.append("note: loops remain in the cost compile; the cost model counts their bodies once, so FLOPs and "
                 "time are low")
  return "\n".join(lines)

