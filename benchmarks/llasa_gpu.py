"""Llasa on one accelerator: train-step MFU of a configs/llasa.py shape, and decode tokens/s.

MFU = the family's analytic train FLOPs per step (`train_flops`, forward + backward matmuls) / step time / the
card's dense bf16 peak. Decode runs `generate` (jitted prefill + while_loop over the KV cache, greedy, never
stopping early) for each batch size. One script, one card:

    python benchmarks/llasa_gpu.py [--size 1b --seq 2048 --rows 8 --steps 10 --decode-batches 1,64] [--write]
    python benchmarks/llasa_gpu.py --size tiny --seq 128 --rows 2 --steps 2 --decode-batches 1 --decode-tokens 8  (CPU check)
"""

import argparse
import importlib.util
import os
import sys
import time

import numpy as np

import common
from llasa_train import JaxSide

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12,
             "TPU v6 lite": 918e12}  # dense bf16 FLOP/s per chip


def llasa_config(size: str, seq: int, rows: int):
  spec = importlib.util.spec_from_file_location("configs_llasa", os.path.join(ROOT, "configs", "llasa.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(size)
  cfg.llasa.update(seq_len=seq, train_text=True)
  cfg.train.batch_size = rows
  cfg.mesh.update(data=1, fsdp=1)
  return cfg


def peak(device_kind: str) -> float | None:
  return next((v for k, v in PEAK_BF16.items() if k.lower() in device_kind.lower()), None)


def decode_tokens_per_s(model, vocab_size: int, batch: int, prompt: int, new: int) -> float:
  import jax
  from jaxspeech.llasa import generate
  prompts = list(np.random.default_rng(0).integers(0, vocab_size, (batch, prompt)))
  greedy = generate.Sampling(greedy=True, repetition_penalty=1.0)
  run = lambda: generate.generate(model, prompts, jax.random.PRNGKey(0), max_new_tokens=new, eos_id=-1,
                                  sampling=greedy)
  run()  # compile
  t0 = time.perf_counter()
  run()
  return batch * new / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", default="1b")
  parser.add_argument("--seq", type=int, default=2048)
  parser.add_argument("--rows", type=int, default=8, help="2048-token rows per train step")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--decode-batches", default="1,64")
  parser.add_argument("--decode-prompt", type=int, default=128)
  parser.add_argument("--decode-tokens", type=int, default=512)
  parser.add_argument("--write", action="store_true")
  args = parser.parse_args()
  import jax
  from flax import nnx
  from jaxspeech.llasa import family

  cfg = llasa_config(args.size, args.seq, args.rows)
  side = JaxSide(cfg)
  side.train_step()
  times = [side.train_step() for _ in range(args.steps)]
  step_s = float(np.median(times))
  kind = jax.devices()[0].device_kind
  flops = family.train_flops(cfg)
  card_peak = peak(kind)
  mfu = f"{flops / step_s / card_peak:.1%}" if card_peak else "n/a (unknown peak)"
  model = family.build_model(cfg, nnx.Rngs(0))
  decode = {b: decode_tokens_per_s(model, cfg.model.vocab_size, b, args.decode_prompt, args.decode_tokens)
            for b in map(int, args.decode_batches.split(","))}
  text = "\n".join([
      f"## Llasa {args.size} on one {kind}", "",
      f"`benchmarks/llasa_gpu.py --size {args.size} --seq {args.seq} --rows {args.rows}`: {kind}; "
      f"{common.versions(('jax', 'flax'))}; {time.strftime('%Y-%m-%d', time.gmtime())} UTC.", "",
      f"- Train step ({cfg.model.dtype}, remat {cfg.model.remat}, {args.rows} × {args.seq} tokens): "
      f"{1e3 * step_s:.0f} ms, {args.rows * args.seq / step_s:.0f} tokens/s, "
      f"{flops / step_s / 1e12:.0f} TFLOP/s, MFU {mfu}; compiled in {side.compile_s:.0f} s.",
      *[f"- Decode, batch {b} ({args.decode_prompt}-token prompts, {args.decode_tokens} new tokens, greedy): "
        f"{tps:.0f} tokens/s" for b, tps in decode.items()], ""])
  print(text)
  if args.write:
    common.write_section(f"Llasa {args.size} on one {kind}", text)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  main()
