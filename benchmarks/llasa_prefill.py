"""Llasa prefill throughput: prompts packed into shared rows (`prepack.prefill`) vs left-padded
(`generate.padded_prefill`), on the same prompts and random weights.

    .venv/bin/python benchmarks/llasa_prefill.py [--size 150m] [--prompts 16] [--min-len 40] [--max-len 400]
                                                 [--rounds 5] [--dtype float32] [--write]
    .venv/bin/python benchmarks/llasa_prefill.py --quick      tiny shapes: checks the script (figures meaningless)

`--prompts` prompt lengths spread evenly from `--min-len` to `--max-len` (10× by default), shuffled. Each side is
one jitted call that leaves what decoding starts from: every prompt's last logits and a KV cache of one row per
prompt (packed: the prefill over the packed rows, then the gather of each prompt's keys into its row). Tokens/s =
real prompt tokens / the median of `--rounds` alternating calls after a compiling one; host packing (Grain's
first-fit, once per batch) is timed apart. Figures measured on a machine shared with other jobs are not to be
published: the section states the load average.
"""

import argparse
import datetime
import os
import statistics
import time

import jax
import numpy as np
from flax import nnx

import common
from jaxspeech.llasa import generate, prepack
from jaxspeech.llasa.model import Llama, LlamaConfig
from jaxspeech.llasa.sizes import LLASA_VOCAB, SIZES

SECTION = "Llasa prefill: prepacked vs left-padded (issue #22)"
VERSIONS = ("jax", "jaxlib", "flax", "grain", "numpy")


def timed(fn, *args) -> float:
  begin = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - begin


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", default="150m", choices=sorted(SIZES))
  parser.add_argument("--prompts", type=int, default=16)
  parser.add_argument("--min-len", type=int, default=40)
  parser.add_argument("--max-len", type=int, default=400)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--quick", action="store_true", help="tiny model, 4 short prompts, 1 round")
  parser.add_argument("--write", action="store_true", help=f"replace the '{SECTION}' section of RESULTS.md")
  args = parser.parse_args()
  if args.quick:
    args.size, args.prompts, args.min_len, args.max_len, args.rounds = "tiny", 4, 4, 40, 1
  model = Llama(LlamaConfig(**{"vocab_size": LLASA_VOCAB, **SIZES[args.size]}, dtype=args.dtype), nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(0)
  lengths = rng.permutation(np.linspace(args.min_len, args.max_len, args.prompts).round().astype(int))
  prompts = [rng.integers(0, model.cfg.vocab_size, n) for n in lengths]
  ids_BxP, segment_ids_BxP, positions_BxP = generate.left_pad(prompts)
  width = ids_BxP.shape[1]
  pack_s = min(timed(prepack.pack, prompts) for _ in range(3))
  packed = prepack.pack(prompts)

  padded = jax.jit(lambda state, ids, segments, positions: generate.padded_prefill(
      nnx.merge(graphdef, state), ids, segments, positions, width))
  packed_prefill = jax.jit(lambda state, packed, segments: prepack.prefill(
      nnx.merge(graphdef, state), packed, segments, width))
  sides = {"left-padded": lambda: padded(state, ids_BxP, segment_ids_BxP, positions_BxP),
           "prepacked": lambda: packed_prefill(state, packed, segment_ids_BxP)}
  compile_s = {name: timed(run) for name, run in sides.items()}
  seconds = {name: [] for name in sides}
  for _ in range(args.rounds):
    for name, run in sides.items():
      seconds[name].append(timed(run))
  tokens = int(lengths.sum())
  slots = {"left-padded": ids_BxP.size, "prepacked": packed.ids_RxT.size}
  rows = {"left-padded": ids_BxP.shape, "prepacked": packed.ids_RxT.shape}
  median = {name: statistics.median(s) for name, s in seconds.items()}
  table = ["| prefill | rows × slots | real tokens / slots | first call (compiles) s | median s | tokens/s |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
  table += [f"| {name} | {rows[name][0]} × {rows[name][1]} | {tokens / slots[name]:.2f} | {compile_s[name]:.1f} | "
            f"{median[name]:.3f} | {tokens / median[name]:,.0f} |" for name in sides]
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  text = (f"## {SECTION}\n\n`benchmarks/llasa_prefill.py --size {args.size} --prompts {args.prompts} --min-len "
          f"{args.min_len} --max-len {args.max_len} --rounds {args.rounds} --dtype {args.dtype}`, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. {common.machine()}; load average "
          f"{os.getloadavg()[0]:.1f} when measured. {common.versions(VERSIONS)}.\n\n"
          f"Llasa `{args.size}` shape ({params / 1e6:.0f}M params, random weights), {args.dtype}; {args.prompts} "
          f"prompts of {args.min_len}–{args.max_len} tokens ({tokens} in all), medians of {args.rounds} alternating "
          f"calls. Each call returns every prompt's last logits and its KV cache row.\n\n" + "\n".join(table)
          + f"\n\nPrepacked / left-padded tokens/s: **{median['left-padded'] / median['prepacked']:.2f}×**. Packing "
          f"the prompts on the host (Grain's first-fit, once per batch) took {1e3 * pack_s:.1f} ms more.\n")
  print(text)
  if args.write:
    common.write_section(SECTION, text)


if __name__ == "__main__":
  main()
