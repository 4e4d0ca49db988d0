"""`jaxspeech plan`: what a config costs on a mesh before it runs there.

  jaxspeech plan --config=configs/ast.py:base --mesh data=2,fsdp=4 --device h100 [--hbm-gib 80]

Reports the parameter count; per-device memory for params, optimizer state, gradients and activations;
the FLOPs of one step (the family's `train_flops`); the projected step time and MFU at the device's peak;
and whether the step fits the device's HBM.

Memory is XLA's own count: the planner builds the trainer's real train step (the same jit, state and
batch shardings as `jaxspeech train`), lowers it on fake CPU devices laid out as the requested mesh,
compiles it and reads `compiled.memory_analysis()`. The fake devices are made in a child process whose
XLA_FLAGS ask for as many as the mesh needs, so a laptop plans a 256-chip mesh. On a host that has
the mesh's accelerators (an 8-GPU node), `--native` compiles for them instead, with their own compiler.
Batch shapes come from the family's `batch_shapes` (no data needed), else from one batch of the config's
dataset. The same figures are estimated analytically (every param split over fsdp × tensor, AdamW's two
moments, fp32 gradients in the params' layout); a gap above DISAGREE_PCT % is reported, since it means params
that the rules leave replicated.

CPU compilation is a stand-in: GPU and TPU compilers fuse and schedule differently, so activation memory on
the accelerator can differ by tens of percent; params, optimizer state and gradients do not.
"""

import dataclasses
import json
import math
import os
import pickle
import re
import subprocess
import sys

import jax
from jax.experimental import serialize_executable

from jaxspeech import sharding
from jaxspeech.train import config as config_lib, metrics, pod, state as state_lib, topology, trainer

# device: (device_kind prefix in metrics.PEAK_BF16_FLOPS, HBM GiB per chip as the runtime reports it)
DEVICES = {
    "h100": ("NVIDIA H100", 79.6), "h200": ("NVIDIA H200", 140.4), "a100": ("NVIDIA A100", 80.0),
    "v4": ("TPU v4", 32.0), "v5e": ("TPU v5e", 16.0), "v5p": ("TPU v5p", 95.0), "v6e": ("TPU v6e", 32.0),
}
USABLE_HBM = 0.9         # XLA_PYTHON_CLIENT_MEM_FRACTION on GPUs (launch/common.py); runtime headroom on TPUs
DISAGREE_PCT = 10.0
CHILD_ENV = "JAXSPEECH_PLAN_DEVICES"
MAX_FAKE_DEVICES = 1024  # each fake CPU device costs host memory and compile time; pods go through --topology
GIB = 2.0**30


@dataclasses.dataclass
class Plan:
  family: str
  platform: str               # the compiler's: cpu (fake devices), gpu or tpu (--native)
  mesh: dict[str, int]
  params: int                 # parameter count
  per_device: dict[str, int]  # bytes: params, optimizer, ema, gradients, batch, activations, total
  xla: dict[str, int]         # compiled.memory_analysis(): argument, output, alias, temp (bytes per device)
  analytic: dict[str, int]    # bytes per device: params, optimizer, ema, gradients, state
  flops_per_step: float


def parse_mesh(text: str) -> dict[str, int]:
  """'data=2,fsdp=4' → {'data': 2, 'fsdp': 4, 'tensor': 1, 'sequence': 1}; dcn_<axis>=N multiplies <axis>
  (slices change which links carry the traffic, not what each device holds)."""
  sizes = dict.fromkeys(sharding.MESH_AXES, 1)
  for item in filter(None, text.split(",")):
    name, _, value = item.partition("=")
    axis = name.strip().removeprefix("dcn_")
    if axis not in sharding.MESH_AXES or not re.fullmatch(r"[1-9]\d*", value.strip()):
      raise ValueError(f"--mesh takes axis=size pairs over {', '.join(sharding.MESH_AXES)} (and dcn_<axis>), "
                       f"got {item!r}")
    sizes[axis] *= int(value)
  return sizes


def _shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded abstract arrays."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in _leaves(tree))


def _leaves(tree):
  return [x for x in jax.tree.leaves(tree) if hasattr(x, "shape")]


def measure(cfg, mesh: dict[str, int]) -> Plan:
  """Compiles the train step of `cfg` on `mesh` (over the first devices of this process) and reads its memory."""
  cfg = cfg.copy_and_resolve_references()
  cfg.mesh.update(mesh)
  run = trainer.Trainer(cfg, workdir="", devices=jax.devices()[:math.prod(mesh.values())])
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=run.batch_shardings[k])
                    for k, v in state_lib.batch_shapes(run.family, cfg).items() if k in run.batch_shardings}
  with sharding.use_rules(run.mesh, run.rules):
    stats = run.train_step.lower(run.target, abstract_batch).compile().memory_analysis()
  xla = dict(argument=stats.argument_size_in_bytes, output=stats.output_size_in_bytes,
             alias=stats.alias_size_in_bytes, temp=stats.temp_size_in_bytes)
  state = run.target
  per_device = dict(params=_shard_bytes(state.params), optimizer=_shard_bytes(state.opt_state),
                    ema=_shard_bytes(state.ema) if state.ema is not None else 0, batch=_shard_bytes(abstract_batch))
  per_device["gradients"] = per_device["params"]  # fp32, in the params' layout
  per_device["activations"] = max(xla["temp"] - per_device["gradients"], 0)
  per_device["total"] = xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]
  count = state_lib.param_count(state.params)
  return Plan(family=cfg.family, platform=run.mesh.devices.flat[0].platform, mesh=dict(mesh), params=count,
              per_device=per_device, xla=xla, analytic=analytic(count, mesh, bool(cfg.train.ema_decay)),
              flops_per_step=run.flops_per_step)


def analytic(params: int, mesh: dict[str, int], ema: bool) -> dict[str, int]:
  """fp32 master params split over fsdp × tensor; AdamW's two moments; fp32 gradients; the EMA copy."""
  each = 4 * params / (mesh["fsdp"] * mesh["tensor"])
  out = dict(params=each, optimizer=2 * each, ema=each if ema else 0, gradients=each)
  out["state"] = out["params"] + out["optimizer"] + out["ema"]
  return {k: int(v) for k, v in out.items()}


def _size(n: float) -> str:
  return f"{n / GIB:8.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:8.2f} MiB"


def _ms(seconds: float) -> str:
  return f"{seconds * 1e3:.3g} ms"


def gap_pct(measured: float, estimate: float) -> float:
  return 100.0 * abs(measured - estimate) / max(estimate, 1.0)


def report(plan: Plan, device: str | None, hbm_gib: float | None, mfu: float, step_time: float | None) -> str:
  n = math.prod(plan.mesh.values())
  d = plan.per_device
  lines = [f"{plan.family} on mesh " + " ".join(f"{k}={v}" for k, v in plan.mesh.items()) + f" ({n} devices)",
           f"parameters           {plan.params:,} ({_size(4 * plan.params).strip()} in fp32)",
           f"memory per device    (XLA memory_analysis of the compiled train step, {plan.platform} compiler)"]
  for name, key in (("params", "params"), ("optimizer state", "optimizer"), ("EMA params", "ema"),
                    ("gradients", "gradients"), ("activations + temps", "activations"), ("batch", "batch")):
    if d[key] or key != "ema":
      estimate = f"   analytic {_size(plan.analytic[key])}" if key in plan.analytic else ""
      lines.append(f"  {name:<20} {_size(d[key])}{estimate}")
  lines.append(f"  {'total (peak)':<20} {_size(d['total'])}")
  state_xla = plan.xla["alias"]  # the donated state, as the compiled step holds it
  if gap_pct(state_xla, plan.analytic["state"]) > DISAGREE_PCT:
    lines.append(f"  note: XLA holds {_size(state_xla).strip()} of state per device, the analytic estimate "
                 f"{_size(plan.analytic['state']).strip()} ({gap_pct(state_xla, plan.analytic['state']):.0f}% apart): "
                 "some params are not split over fsdp × tensor (a dim that does not divide, or a replicated axis)")
  lines.append(f"FLOPs per step       {plan.flops_per_step:.4g} (analytic matmul FLOPs, forward + backward)")
  if device is not None:
    kind, default_hbm = DEVICES[device]
    peak = metrics.PEAK_BF16_FLOPS[kind]
    ideal = plan.flops_per_step / (n * peak)
    lines.append(f"step time on {n} × {device}: {_ms(ideal)} at 100% MFU ({peak / 1e12:.0f} TFLOP/s bf16 peak each), "
                 f"{_ms(ideal / mfu)} at {mfu:.0%} MFU")
    if step_time:
      lines.append(f"MFU at a measured {_ms(step_time)} per step: {ideal / step_time:.1%}")
    hbm = hbm_gib or default_hbm
  else:
    hbm = hbm_gib
  if hbm:
    usable = USABLE_HBM * hbm * GIB
    verdict = "yes" if d["total"] <= usable else "NO"
    lines.append(f"fits in {hbm:g} GiB HBM? {verdict}: {_size(d['total']).strip()} of {_size(usable).strip()} usable "
                 f"({USABLE_HBM:.0%})")
  return "\n".join(lines)


def add_parser(groups) -> None:
  p = groups.add_parser("plan", help="memory, FLOPs and step time of a config on a mesh or a TPU pod, before it runs",
                        description=__doc__.split("\n\n")[1], epilog=config_lib.OVERRIDES_HELP)
  config_lib.add_argument(p)
  p.add_argument("--mesh", default=None, help="axis sizes, e.g. data=2,fsdp=4,tensor=1 (dcn_<axis>=N across "
                 "slices); with --topology, default: the config's mesh over the pod's chips")
  p.add_argument("--json", action="store_true", help="print the plan as JSON")
  tpu = p.add_argument_group("TPU pods, compiled by the TPU compiler with no TPU (needs pip install '.[tpu]')")
  tpu.add_argument("--topology", default=None, help="gcloud's type (v5p-128, v5litepod-16, v6e-16, v4-32) or chips "
                   "per dimension (v5p:4x4x8, v5e:4x4)")
  tpu.add_argument("--num-slices", type=int, default=1,
                   help="slices joined over the data-centre network (the mesh's dcn_* axes; default dcn_data=N)")
  tpu.add_argument("--save-executable", default=None, metavar="FILE",
                   help="write the serialized compiled train step here (jax.experimental.serialize_executable)")
  tpu.add_argument("--extrapolate", action="store_true", help="price the train step from 1- and 2-layer loop-free "
                   "compiles, extrapolated to the model's depth (minutes instead of tens of minutes for deep models)")
  cpu = p.add_argument_group("other meshes, compiled for fake CPU devices (or --native)")
  cpu.add_argument("--device", choices=list(DEVICES), default=None, help="the accelerator, for peak FLOP/s and HBM")
  cpu.add_argument("--hbm-gib", type=float, default=None, help="HBM per device in GiB (default: the device's)")
  cpu.add_argument("--mfu", type=float, default=0.4, help="MFU assumed for the projected step time")
  cpu.add_argument("--step-time", type=float, default=None, help="a measured step time in seconds, for its MFU")
  cpu.add_argument("--native", action="store_true", help="compile for this host's own devices, not fake CPU ones")
  p.set_defaults(run=run, config_overrides=True)


def _error(message: str) -> int:
  print(f"jaxspeech plan: error: {message}", file=sys.stderr)
  return 2


def pod_mesh(cfg, text: str | None, pod: topology.Topology) -> dict[str, int]:
  """The mesh config for a pod: `text`'s axes (others 1), else the config's; N slices add dcn_data=N unless a dcn
  axis is given. ValueError when it does not divide the pod's chips."""
  if text is None:
    sizes = {k: int(v) for k, v in cfg.mesh.items()}
  else:
    sizes = dict.fromkeys(sharding.MESH_AXES, 1)
    for item in filter(None, text.split(",")):
      name, _, value = item.partition("=")
      name = name.strip()
      if name.removeprefix("dcn_") not in sharding.MESH_AXES or not re.fullmatch(r"-?[1-9]\d*", value.strip()):
        raise ValueError(f"--mesh takes axis=size pairs over {', '.join(sharding.MESH_AXES)} (and dcn_<axis>), "
                         f"got {item!r}")
      sizes[name] = int(value)
  dcn = math.prod(v for k, v in sizes.items() if k.startswith("dcn_"))
  if pod.num_slices > 1 and dcn == 1:
    sizes["dcn_data"] = dcn = pod.num_slices
  if dcn != pod.num_slices:
    raise ValueError(f"the mesh's dcn axes make {dcn} slices; --num-slices is {pod.num_slices}")
  ici = [sizes.get(a, 1) for a in sharding.MESH_AXES]
  sharding.mesh.fill_sizes(ici, pod.chips_per_slice, f"mesh on {pod.name} ({pod.chips_per_slice} chips a slice)")
  return sizes


def _pod_main(cfg, args) -> int:
  try:
    target = topology.parse(args.topology, args.num_slices)
    mesh = pod_mesh(cfg, args.mesh, target)
    rows = math.prod(v for k, v in sizes_of(mesh, target).items() if k in ("data", "fsdp"))
    if cfg.train.batch_size % rows:
      raise ValueError(f"train.batch_size={cfg.train.batch_size} does not split over data × fsdp = {rows} chips")
    plan, executable = pod.measure(cfg, target, mesh, keep_executable=bool(args.save_executable),
                                   extrapolate=args.extrapolate)
  except (ValueError, RuntimeError) as e:
    return _error(str(e).strip().splitlines()[-1])
  if executable is not None:
    with open(args.save_executable, "wb") as f:
      pickle.dump(serialize_executable.serialize(executable), f)
  if args.json:
    print(json.dumps(dataclasses.asdict(plan)))
  else:
    print(pod.report(plan))
  return 0


def sizes_of(mesh: dict[str, int], target: topology.Topology) -> dict[str, int]:
  """Each axis's total size over the pod (a -1 filled in, dcn_<axis> multiplied in)."""
  ici = sharding.mesh.fill_sizes([mesh.get(a, 1) for a in sharding.MESH_AXES], target.chips_per_slice, "mesh")
  return {a: n * mesh.get(f"dcn_{a}", 1) for a, n in zip(sharding.MESH_AXES, ici)}


def run(args) -> int:
  cfg = args.config
  if args.topology is not None:
    return _pod_main(cfg, args)
  try:
    if args.mesh is None:
      raise ValueError("give --mesh axis=size,... (or --topology for a TPU pod)")
    mesh = parse_mesh(args.mesh)
    rows = mesh["data"] * mesh["fsdp"]
    if cfg.train.batch_size % rows:
      raise ValueError(f"train.batch_size={cfg.train.batch_size} does not split over data × fsdp = {rows} devices")
  except ValueError as e:
    return _error(str(e).strip().splitlines()[-1])
  n = math.prod(mesh.values())
  if not args.native and n > MAX_FAKE_DEVICES:
    return _error(f"--mesh needs {n:,} devices; the CPU planner simulates at most {MAX_FAKE_DEVICES:,} "
                  "(plan TPU pods with --topology)")
  if args.native and n > jax.device_count():
    return _error(f"--native: the mesh needs {n} devices, this host has {jax.device_count()}")
  if not args.native and os.environ.get(CHILD_ENV) != str(n):
    return _in_child(args.argv, n)
  try:
    plan = measure(cfg, mesh)
  except FileNotFoundError as e:
    return _error(f"{e} (the planner reads one batch of the config's dataset for its shapes; point "
                  "--config.data.path at it)")
  except ValueError as e:
    return _error(str(e).strip().splitlines()[-1])
  if args.json:
    print(json.dumps(dataclasses.asdict(plan)))
  else:
    print(report(plan, args.device, args.hbm_gib, args.mfu, args.step_time))
  return 0


def _in_child(argv: list[str], devices: int) -> int:
  """Reruns this command where JAX starts with `devices` fake CPU devices."""
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  env = {**os.environ, CHILD_ENV: str(devices), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count={devices}".strip()}
  return subprocess.run([sys.executable, "-m", "jaxspeech.cli", *argv], env=env, check=False).returncode
