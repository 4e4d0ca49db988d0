"""Every accelerator figure the issues ask for, in one run on one lent card (about 6 minutes on an H100):

    python benchmarks/gpu.py [--write]      on the GPU/TPU host, after `make venv` and `pip install jax[cuda12]`
    python benchmarks/gpu.py --smoke        tiny shapes on CPU: checks the script end to end (figures meaningless)

  llasa train    configs/llasa.py:1b, 2048-token rows, bf16, scanned layers with its remat policy: step time,
                 tokens/s, MFU; the planner's memory (XLA's memory_analysis of the same step on this card) against
                 the card's measured peak, and its projected step time at `plan --mfu` (0.4) against the measured
  llasa decode   jitted prefill + while_loop over the KV cache, greedy, 128-token prompts, 512 new tokens, at
                 batch 1 and 64: tokens/s
  dit train      configs/dit.py:base (F5TTS_v1_Base), bf16, 8 × 1024 frames: frames/s, MFU
  dit sampling   the same DiT, batch 1, a 3 s reference and 10 s generated, NFE 32, CFG 2, sway −1, Euler: RTF
                 (sampling seconds / generated seconds, vocoder not included)

MFU = the family's analytic train FLOPs (`train_flops`, forward + backward matmuls) / step time / the card's dense
bf16 peak (`jaxspeech.train.metrics.PEAK_BF16_FLOPS`). Each timing is the median of `--steps` calls after a
warm-up call that compiles. Prints one markdown table; `--write` puts it in benchmarks/RESULTS.md under the card's
name.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

import numpy as np

import common
import dit_train
import llasa_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {  # check → (full, --smoke)
    "llasa": (dict(size="1b", seq=2048, rows=8), dict(size="tiny", seq=128, rows=2)),
    "decode": (dict(batches=(1, 64), prompt=128, new=512), dict(batches=(1, 2), prompt=8, new=8)),
    "dit": (dict(size="base", batch=8, frames=1024), dict(size="tiny", batch=2, frames=64)),
    "rtf": (dict(ref_s=3.0, gen_s=10.0, nfe=32), dict(ref_s=0.3, gen_s=0.5, nfe=4)),
}


@dataclasses.dataclass
class Row:
  check: str
  setup: str
  figure: str
  mfu: str = ""
  note: str = ""


def timed(fn, steps: int) -> float:
  """Median seconds of `steps` calls of `fn` (which blocks until its result is ready), after one warm-up call."""
  fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def mfu(flops: float, seconds: float) -> str:
  import jax
  from jaxspeech.train import metrics
  peak = metrics.peak_flops(jax.devices()[0])
  return f"{flops / seconds / peak:.1%}" if peak else "n/a (unknown peak)"


def load_config(name: str, variant: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def llasa_rows(size: str, seq: int, rows: int, steps: int, smoke: bool) -> list[Row]:
  import jax
  from jaxspeech.llasa import family
  from jaxspeech.train import metrics, plan

  cfg = load_config("llasa", size)
  cfg.llasa.update(seq_len=seq, train_text=True)
  cfg.train.batch_size = rows
  cfg.mesh.update(data=1, fsdp=1, tensor=1, sequence=1)
  cfg.train.compilation_cache = ""  # the planner compiles the same step first
  if not smoke:
    cfg.model.dtype = "bfloat16"
  projected = plan.measure(cfg, dict(cfg.mesh))
  engine = common.EngineStep(family.FAMILY, cfg, llasa_train.packed_batch(cfg))
  seconds = timed(engine.train_step, steps)
  flops = family.train_flops(cfg)
  peak_bytes = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  measured = f"{peak_bytes / 2**30:.1f} GiB" if peak_bytes else "n/a (no memory_stats)"
  projected_s = flops / (metrics.peak_flops(jax.devices()[0]) or float("nan")) / 0.4
  setup = f"{size}, {rows} × {seq} tokens, {cfg.model.dtype}, remat {cfg.model.remat}"
  return [Row("llasa train", setup, f"{1e3 * seconds:.0f} ms/step, {rows * seq / seconds:,.0f} tokens/s",
              mfu(flops, seconds), f"compiled in {engine.compile_s:.0f} s"),
          Row("llasa planner", setup, f"memory {projected.per_device['total'] / 2**30:.1f} GiB planned, "
              f"{measured} peak measured", "", f"step {1e3 * projected_s:.0f} ms projected at 40% MFU, "
              f"{1e3 * seconds:.0f} ms measured")]


def decode_rows(size: str, batches: tuple[int, ...], prompt: int, new: int, steps: int) -> list[Row]:
  import jax
  from flax import nnx
  from jaxspeech.llasa import family, generate

  cfg = load_config("llasa", size)
  model = family.build_model(cfg, nnx.Rngs(0))
  greedy = generate.Sampling(greedy=True, repetition_penalty=1.0)
  rows = []
  for batch in batches:
    prompts = list(np.random.default_rng(0).integers(0, cfg.model.vocab_size, (batch, prompt)))
    run = lambda: jax.block_until_ready(generate.generate(  # noqa: E731
        model, prompts, jax.random.PRNGKey(0), max_new_tokens=new, eos_id=-1, sampling=greedy))
    seconds = timed(run, max(1, steps // 4))
    rows.append(Row("llasa decode", f"{size}, batch {batch}, {prompt}-token prompts, {new} new, greedy, "
                    f"{cfg.model.dtype}", f"{batch * new / seconds:,.0f} tokens/s"))
  return rows


def dit_rows(size: str, batch: int, frames: int, steps: int, smoke: bool) -> list[Row]:
  from jaxspeech.dit import family

  cfg = load_config("dit", size)
  cfg.mesh.update(data=1, fsdp=1, tensor=1, sequence=1)
  cfg.train.ema_decay = 0.0
  if not smoke:
    cfg.model.dtype = "bfloat16"
  cfg.data.update(frame_budget=batch * frames, bucket_seconds=(frames * family.HOP / family.SAMPLE_RATE,))
  rng = np.random.default_rng(0)
  inputs = {"mel": rng.normal(-5, 2, (batch, frames, cfg.model.mel_dim)).astype(np.float32),
            "text": rng.integers(0, 50, (batch, frames // 4)).astype(np.int32)}
  engine = common.EngineStep(dit_train.mel_family(), cfg, inputs)
  seconds = timed(engine.train_step, steps)
  return [Row("dit train", f"{size}, {batch} × {frames} frames, {cfg.model.dtype}",
              f"{1e3 * seconds:.0f} ms/step, {batch * frames / seconds:,.0f} frames/s",
              mfu(family.train_flops(cfg), seconds), f"compiled in {engine.compile_s:.0f} s")]


def rtf_rows(size: str, ref_s: float, gen_s: float, nfe: int, steps: int, smoke: bool) -> list[Row]:
  import jax
  from flax import nnx
  from jaxspeech.dit import family, sample

  cfg = load_config("dit", size)
  if not smoke:
    cfg.model.dtype = "bfloat16"
  model = family.build_model(cfg, nnx.Rngs(0))
  frames_per_s = family.SAMPLE_RATE / family.HOP
  ref, gen = int(ref_s * frames_per_s), int(gen_s * frames_per_s)
  rng = np.random.default_rng(0)
  ref_mel = rng.normal(-5, 2, (1, ref, cfg.model.mel_dim)).astype(np.float32)
  text = rng.integers(0, 50, (1, int(12 * (ref_s + gen_s)))).astype(np.int32)
  run = lambda: jax.block_until_ready(sample.sample(  # noqa: E731
      model, ref_mel, np.array([ref]), text, np.array([ref + gen]), jax.random.PRNGKey(0), nfe=nfe)[0])
  seconds = timed(run, max(1, steps // 2))
  return [Row("dit sampling", f"{size}, batch 1, {ref_s:g} s reference + {gen_s:g} s, NFE {nfe}, CFG 2, Euler, "
              f"{cfg.model.dtype}", f"RTF {seconds / gen_s:.4f}", "", f"{1e3 * seconds:.0f} ms per utterance")]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU): check that every part runs")
  parser.add_argument("--steps", type=int, default=10, help="timed calls per train step figure")
  parser.add_argument("--only", default="llasa,decode,dit,rtf", help="comma-separated checks to run")
  parser.add_argument("--write", action="store_true")
  args = parser.parse_args()
  import jax

  pick = {name: sizes[args.smoke] for name, sizes in SIZES.items() if name in args.only.split(",")}
  llasa_size, dit_size = pick.get("llasa", SIZES["llasa"][args.smoke])["size"], SIZES["dit"][args.smoke]["size"]
  rows, t0 = [], time.perf_counter()
  for name, run in (("llasa", lambda p: llasa_rows(**p, steps=args.steps, smoke=args.smoke)),
                    ("decode", lambda p: decode_rows(llasa_size, **p, steps=args.steps)),
                    ("dit", lambda p: dit_rows(**p, steps=args.steps, smoke=args.smoke)),
                    ("rtf", lambda p: rtf_rows(dit_size, **p, steps=args.steps, smoke=args.smoke))):
    if name in pick:
      rows += run(pick[name])
      print(f"{name} done at {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
  kind = jax.devices()[0].device_kind
  table = ["| check | setup | figure | MFU | note |", "|---|---|---|---:|---|"]
  table += [f"| {r.check} | {r.setup} | {r.figure} | {r.mfu} | {r.note} |" for r in rows]
  text = "\n".join([f"## Accelerator figures: {kind}", "",
                    f"`benchmarks/gpu.py {' '.join(sys.argv[1:])}`".replace(" `", "`") + f" on one {kind} "
                    f"({jax.device_count()} device{'s' if jax.device_count() > 1 else ''} visible), "
                    f"{time.strftime('%Y-%m-%d', time.gmtime())} UTC, {time.perf_counter() - t0:.0f} s in all. "
                    f"{common.versions(('jax', 'jaxlib', 'flax'))}.", "", *table, ""])
  print(text)
  if args.write:
    common.write_section(f"Accelerator figures: {kind}", text)


if __name__ == "__main__":
  main()
