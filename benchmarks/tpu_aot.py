"""Every preset of configs/presets.py compiled by the TPU compiler for TPU slices, on a CPU host (no TPU).

  python benchmarks/tpu_aot.py --write                        # presets × v5p-8, v5p-64, v5e-16 (+ v6e-16 memory)
  python benchmarks/tpu_aot.py --presets llasa_1b_v5p64 --topologies v5p-8

Each preset is laid onto each topology the way it would be launched there: its mesh's parallelism over that
topology's chips (FSDP presets over every chip, data-parallel presets likewise), the same rows (or mel frames)
per chip per microbatch, and the recipe's global batch kept with gradient accumulation (`scale`). A preset whose
microbatch would exceed its global batch on a large topology takes fewer rows per chip. The figures are
`jaxspeech plan --topology`'s (jaxspeech/train/pod.py): memory from the compile as it runs, FLOPs and time from
the loop-free compile; times and MFU are the TPU compiler's estimate (its cost model), not measurements.
"""

import argparse
import datetime
import importlib.util
import os
import sys
import time

import common
from jaxspeech.train import pod, topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGIES = ("v5p-8", "v5p-64", "v5e-16", "v6e-16")
SECTION = "TPU ahead-of-time compile of the presets (compiler estimates, issue #15)"


def presets():
  spec = importlib.util.spec_from_file_location("configs_presets", os.path.join(ROOT, "configs", "presets.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def scale(module, name: str, chips: int):
  """The preset laid onto `chips` chips: its parallel axis over all of them, the same work per chip per
  microbatch, the global batch kept by accumulation."""
  cfg = module.get_config(name)
  axis = "fsdp" if cfg.mesh.fsdp != 1 else "data"
  cfg.mesh.update(data=1, fsdp=1, tensor=1, sequence=1)
  cfg.mesh[axis] = chips
  per_chip = module.per_chip(name)
  if "frame_budget" in cfg.data:
    total = per_chip * cfg.optim.accum_steps * module.chips(module.mesh_of(name))
    cfg.optim.accum_steps = max(1, total // (per_chip * chips))
    cfg.data.frame_budget = per_chip * chips * cfg.optim.accum_steps
  else:
    rows = max(1, min(per_chip, cfg.train.batch_size // chips))
    cfg.optim.accum_steps = max(1, cfg.train.batch_size // (rows * chips))
    cfg.train.batch_size = rows * chips * cfg.optim.accum_steps
  return cfg


def row(name: str, target: topology.Topology, plan: pod.PodPlan, step: pod.Program, cfg, wall: float) -> str:
  train = step is plan.train
  fits = "yes" if not step.over else f"no, by {step.over / 2**30:.1f} GiB"
  ms = "n/a" if step.seconds is None else f"{step.seconds * 1e3:,.1f}"
  mfu = plan.mfu(step)
  rate = ("n/a" if step.seconds is None or not train
          else f"{plan.units_per_step / plan.chips / step.seconds:,.0f} {plan.unit}")
  ratio = f"{step.flops / (plan.train_flops / plan.chips):.2f}" if train else "-"
  collectives = "/".join(f"{step.collectives[k] / 2**30:.2f}" for k in ("all-gather", "reduce-scatter", "all-reduce"))
  label = name if train else f"{name}: {step.name}"
  return (f"| {label} | {target.name} | {cfg.optim.accum_steps if train else '-'} | {fits} | {step.state / 2**30:.2f} | "
          f"{step.temp / 2**30:.2f} | {step.peak / 2**30:.2f} | {ms} | {rate} | "
          f"{'n/a' if mfu is None else f'{mfu:.1%}'} | {plan.roofline(step) * 1e3:,.1f} | {ratio} | {collectives} | "
          f"{wall:.0f} |")


def merged(rows: list[str], date: str) -> list[str]:
  """This run's rows (dated) in place of the section's rows for the same preset and topology; the rest kept."""
  body = open(common.RESULTS).read() if os.path.exists(common.RESULTS) else ""
  start = body.find(f"## {SECTION}\n")
  old = []
  if start >= 0:
    end = body.find("\n## ", start + 1)
    old = [line for line in body[start:end if end >= 0 else None].splitlines()
           if line.startswith("| ") and not line.startswith(("| preset", "| ---"))]
  key = lambda line: tuple(cell.strip() for cell in line.split("|")[1:3])  # noqa: E731
  new = {key(r): f"{r} {date} |" for r in rows}
  kept = [line for line in old if key(line) not in new]
  return kept + list(new.values())


def write(rows: list[str]) -> None:
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
  text = "\n".join([
      f"## {SECTION}", "",
      "`python benchmarks/tpu_aot.py --presets P,... --topologies T,... --write` (each run replaces its own rows "
      f"and keeps the others; each row has its date), compiled on {common.machine()} by libtpu's TPU compiler "
      f"for virtual devices; {common.versions(('jax', 'jaxlib', 'libtpu', 'flax'))}.", "",
      "Per chip. **Step time, throughput and MFU are the TPU compiler's cost-model estimates, not measurements**; "
      "FLOPs and time come from loop-free compiles (layers unrolled, one microbatch, no windowed einsums) at 1 "
      "and 2 layers, extrapolated to the model's depth (`jaxspeech plan --extrapolate`), times accumulation plus "
      "one optimizer update; memory from the compile as it runs. MFU = the family's analytic `train_flops` / "
      "(chips × bf16 peak × estimated time); Pallas kernels (splash attention) are priced by bytes only, so "
      "`compiler/analytic` < 1 where they run. Where this libtpu's cost model gives a negative time (every v6e "
      "step, and some others) the row has n/a; `roofline ms` (the compiler's FLOPs and HBM bytes at the chip's "
      "peak rates) is a lower bound on any step. Presets missing from the table are not compiled yet: on a "
      "2-core host a 1B-8B step takes the TPU compiler 6-25 minutes; `codec_base_v5p64` (a GAN step: generator, "
      "multi-period and STFT discriminators) 43 minutes at up to 20 GiB of compiler RSS, since the discriminators "
      "take the real and the detached fake in one pass and the STFT discriminator's five bands run as one grouped "
      "convolution per layer (before, it ran a 24 GiB host out of memory; docs/scale.md).",
      "", "| preset | topology | accum | fits? | state GiB | temp GiB | peak GiB | est. step ms | est. rate/chip/s | "
      "est. MFU | roofline ms | compiler/analytic FLOPs | AG/RS/AR GiB | compile s | date |",
      "| --- " * 15 + "|", *merged(rows, date)])
  common.write_section(SECTION, text)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  module = presets()
  parser.add_argument("--presets", default=",".join(module.VARIANTS), help="comma-separated preset names")
  parser.add_argument("--topologies", default=",".join(TOPOLOGIES), help="comma-separated TPU topologies")
  parser.add_argument("--full-cost", action="store_true",
                      help="price the step from the full unrolled compile, not from 1- and 2-layer ones extrapolated")
  parser.add_argument("--write", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
  args = parser.parse_args()
  for name in args.presets.split(","):
    for spelled in args.topologies.split(","):
      target = topology.parse(spelled)
      cfg = scale(module, name, target.chips)
      start = time.time()
      plan, _ = pod.measure(cfg, target, dict(cfg.mesh), extrapolate=not args.full_cost)
      rows = [row(name, target, plan, step, cfg, time.time() - start) for step in plan.programs]
      print("\n".join(rows), flush=True)
      if args.write:  # after each compile, so that a long queue cut short keeps what it measured
        write(rows)
  return 0


if __name__ == "__main__":
  sys.exit(main())
