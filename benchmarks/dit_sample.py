"""DiT sampling real-time factor: jaxspeech's jitted sampler vs f5-tts' CFM.sample, same weights and NFE.

    .venv/bin/python benchmarks/dit_sample.py [--write] [--nfe 32] [--repeats 3]

configs/dit.py:tiny's DiT (random weights), batch 1, a 2 s reference and 4 s to generate (6 s = 562 frames),
CFG 2 (one batched cond/uncond forward a step), sway −1, Euler, float32, on this CPU; torch with 2 threads.
RTF = sampling seconds / generated seconds (vocoder not included); medians of alternating repeats after a warm-up
(JAX compiles once).
"""

import argparse
import os
import statistics
import sys
import time

import dit_train

SECTION = "DiT sampling RTF (F5-TTS, issue #7)"
VERSIONS = ("jax", "jaxlib", "flax", "torch", "f5-tts", "numpy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF, TOTAL, TEXT, MEL, HOP, RATE = 187, 562, 60, 100, 256, 24000

if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--write", action="store_true")
  parser.add_argument("--nfe", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  import jax
  import numpy as np
  import torch
  from jaxspeech.dit import convert, sample
  from jaxspeech.dit.model import config_from
  from tests import test_dit_parity as ref
  torch.set_num_threads(2)
  cfg = config_from(convert.load_config(os.path.join(ROOT, "configs/dit.py:tiny")).model.to_dict())
  f5 = ref.f5_backbone(cfg)
  ours = ref.ours_from(f5, cfg)
  cfm = ref.CFM(transformer=f5, num_channels=MEL).eval()
  rng = np.random.default_rng(0)
  ref_mel = rng.normal(-5, 2, (1, REF, MEL)).astype(np.float32)
  text = rng.integers(0, 50, (1, TEXT))

  def run_jax():
    t0 = time.perf_counter()
    mel = sample.sample(ours, ref_mel, [REF], text, [TOTAL], jax.random.PRNGKey(0), nfe=args.nfe).mel
    mel.block_until_ready()
    return time.perf_counter() - t0

  def run_torch():
    t0 = time.perf_counter()
    with torch.no_grad():
      cfm.sample(cond=torch.from_numpy(ref_mel), text=torch.from_numpy(text), duration=TOTAL, steps=args.nfe,
                 cfg_strength=2.0, sway_sampling_coef=-1.0, seed=0)
    return time.perf_counter() - t0

  run_jax(), run_torch()
  times = {"jaxspeech": [], "f5-tts (torch)": []}
  for _ in range(args.repeats):
    times["jaxspeech"].append(run_jax())
    times["f5-tts (torch)"].append(run_torch())
  seconds = (TOTAL - REF) * HOP / RATE
  rtf = {name: statistics.median(t) / seconds for name, t in times.items()}
  dit_train.report(
      SECTION, "dit_sample.py", VERSIONS,
      f"configs/dit.py:tiny's DiT, batch 1, {seconds:.1f} s generated after a {REF * HOP / RATE:.1f} s reference, "
      f"NFE {args.nfe}, CFG 2, sway −1, Euler, float32; medians of {args.repeats}.",
      ["| side | seconds | RTF |", "| --- | --- | --- |"]
      + [f"| {n} | {statistics.median(t):.2f} | {rtf[n]:.3f} |" for n, t in times.items()],
      f"torch / jaxspeech RTF: **{rtf['f5-tts (torch)'] / rtf['jaxspeech']:.2f}×**.", args.write)


if __name__ == "__main__":
  main()
