"""Where a preset's TPU step spends its HBM traffic: the largest top-level buffers of its cost compile.

  JAX_PLATFORMS=cpu python benchmarks/tpu_buffers.py --preset dit_base_v5p64 --topology v5p-8 --depth 2
  JAX_PLATFORMS=cpu python benchmarks/tpu_buffers.py --preset dit_base_v5p64 --topology v5p-8 --depth 1 --cpu-tricks
  JAX_PLATFORMS=cpu python benchmarks/tpu_buffers.py --preset codec_base_v5p64 --topology v5p-8 \
      --set data.crop_seconds=0.1

The preset is laid onto the topology as benchmarks/tpu_aot.py lays it, compiled loop-free for one microbatch
(`pod.cost_config`) by libtpu's TPU compiler for virtual devices, and the optimised HLO's instructions outside
fused computations are summed by (dtype, shape, op, source op name). Fewer layers (`--depth`) keep the compile to
minutes on a laptop; each layer's buffers repeat. `--set KEY=VALUE` overrides a config field the same way
(a shorter codec crop). The cost model's own FLOPs, bytes and time are printed first.
"""

import argparse
import ast
import collections
import re
import sys

import tpu_aot
from jaxspeech import sharding
from jaxspeech.dit import modules as dit_modules
from jaxspeech.train import aot, pod, topology, trainer

BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1}
SKIP = {"parameter", "get-tuple-element", "bitcast", "tuple", "constant"}
INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?[\w.\-]+ = (\w+)\[([\d,]+)\]\S* ([\w\-]+)\(")
COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")


def buffers(hlo: str) -> collections.Counter:
  """{(dtype, dims, op, source op): bytes} over the instructions of unfused computations."""
  out, fused = collections.Counter(), False
  for line in hlo.splitlines():
    header = COMPUTATION.match(line)
    if header:
      fused = header.group(1) is None and any(w in header.group(2) for w in ("fused", "fusion", "wrapped"))
      continue
    match = None if fused else INSTRUCTION.match(line)
    if match is None or match.group(1) not in BYTES or match.group(3) in SKIP:
      continue
    dtype, dims, op = match.groups()
    source = re.search(r'op_name="([^"]+)"', line)
    size = BYTES[dtype]
    for d in dims.split(","):
      size *= int(d)
    out[(dtype, dims, op, source.group(1)[-90:] if source else "")] += size
  return out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", required=True, help="a preset of configs/presets.py")
  parser.add_argument("--topology", default="v5p-8", help="a TPU topology, e.g. v5p-8")
  parser.add_argument("--depth", type=int, default=0, help="layers to keep (model.depth or model.layers); 0: all")
  parser.add_argument("--top", type=int, default=25, help="buffers to list")
  parser.add_argument("--cpu-tricks", action="store_true",
                      help="trace the DiT's CPU-only kernels (tap-sum conv gradients, per-tap depthwise conv) for the "
                           "TPU too: what gating them to CPU saves the TPU step")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field (dotted path, a Python literal), e.g. data.crop_seconds=0.1")
  args = parser.parse_args()
  target = topology.parse(args.topology)
  cfg = pod.cost_config(tpu_aot.scale(tpu_aot.presets(), args.preset, target.chips))
  for item in args.set:
    key, value = item.split("=", 1)
    *parents, leaf = key.split(".")
    section = cfg
    for name in parents:
      section = section[name]
    section[leaf] = ast.literal_eval(value)
  cfg.train.compilation_cache = ""
  if args.depth:
    cfg = pod.at_depth(cfg, args.depth)
  if args.cpu_tricks:
    dit_modules.platform = lambda: "cpu"
  run = trainer.Trainer(cfg, workdir="", devices=topology.devices(target))
  _, batch = pod._abstract_batch(run, cfg)  # pylint: disable=protected-access
  with sharding.use_rules(run.mesh, run.rules):
    compiled = aot.compile_for(run.train_step, (run.target, batch), cost=True)
  print(f"{args.preset} on {target.name}, one microbatch, {args.depth or 'all'} layers: compiler "
        f"{compiled.flops / 1e12:.3f} TFLOP, {compiled.bytes_accessed / 1e9:.1f} GB accessed, est. "
        f"{'n/a' if compiled.seconds is None else f'{compiled.seconds * 1e3:.1f}'} ms per chip (cost model)")
  for (dtype, dims, op, source), size in buffers(compiled.executable.as_text()).most_common(args.top):
    print(f"{size / 2**20:9.1f} MiB  {dtype}[{dims}]  {op}  {source}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
