"""DiT sampling by ODE solver: flow evaluations against quality on a trained tiny DiT (issue #23).

    jaxspeech train --config=configs/dit.py:tiny --workdir=workdirs/dit_tiny --config.train.steps=400 \
        --config.train.ema_decay=0.99 --config.optim.warmup_steps=40 --config.train.eval_every=0
    .venv/bin/python benchmarks/dit_solvers.py --dit workdirs/dit_tiny [--limit 4] [--write]

The first `limit` test_unseen utterances (unseen speakers), each prompted by another clip of its speaker as
`jaxspeech dit eval` does, sampled as one batch with the DiT's EMA weights, CFG 2, sway −1 and F5's time grids
(EPSS where F5 has one), from the same noise for every solver. Per solver and step count: flow evaluations,
the generated mel's mean distance to the converged solution (dopri5 at rtol 1e-6, mean |Δ| of the natural-log
mel over the generated frames), MCD-DTW of its Griffin-Lim audio against the recording, and the sampling
seconds of the batch (compiled; one run).
"""

import argparse
import datetime
import time

import jax
import numpy as np

import common
from jaxspeech.audio import quality
from jaxspeech.audio.griffin_lim import griffin_lim
from jaxspeech.dit import evaluate, family, sample, speak, vocab
from jaxspeech.workdir import Workdir

TRAINED = ("--config.train.steps=400 --config.train.ema_decay=0.99 --config.optim.warmup_steps=40 "
           "--config.train.eval_every=0")
SECTION = "DiT sampling: ODE solvers, evaluations against quality (issue #23)"
VERSIONS = ("jax", "jaxlib", "flax", "numpy")
# (method, steps or None for adaptive, rtol)
GRID = ([("euler", n, None) for n in (8, 16, 32)] + [("ab2", n, None) for n in (8, 16, 32)]
        + [("midpoint", n, None) for n in (4, 8, 16)] + [("heun", n, None) for n in (4, 8, 16)]
        + [("dopri5", None, rtol) for rtol in (1e-2, 1e-3)])


def batch(prompts: list[speak.Prompt]):
  r = max(len(p.ref_mel_TxM) for p in prompts)
  n = max(p.ids_1xN.shape[1] for p in prompts)
  ref_mel = np.stack([np.pad(p.ref_mel_TxM, ((0, r - len(p.ref_mel_TxM)), (0, 0))) for p in prompts])
  ids = np.stack([np.pad(p.ids_1xN[0], (0, n - p.ids_1xN.shape[1]), constant_values=-1) for p in prompts])
  return ref_mel, [p.ref_frames for p in prompts], ids, [p.duration for p in prompts]


def prompts_of(model, tokens, data_dir: str, limit: int):
  """(the first `limit` test_unseen utterances, each one's `speak.Prompt` from another clip of its speaker)."""
  chosen, everything = evaluate.recordings(data_dir, "test_unseen", limit)
  prompts = []
  for u in chosen:
    p = evaluate.prompt_for(u, everything)
    prompts.append(speak.prompt(model, tokens, p["wav"], family.SAMPLE_RATE, p["text"], u["text"]))
  return chosen, prompts


def generated_seconds(sampled, prompts) -> float:
  return sum(int(d) - p.ref_frames for d, p in zip(sampled.duration, prompts)) * family.HOP / family.SAMPLE_RATE


def score(out, reference, prompts, chosen) -> tuple[float, float]:
  """(mean |Δ| of the generated log-mel frames from `reference`'s, mean MCD-DTW of their Griffin-Lim audio
  against the recordings)."""
  gaps, mcds = [], []
  for i, (p, u) in enumerate(zip(prompts, chosen)):
    end = int(out.duration[i])
    mel_TxM = np.asarray(out.mel[i, p.ref_frames:end])
    gaps.append(np.abs(mel_TxM - np.asarray(reference.mel[i, p.ref_frames:end])).mean())
    wav_S = speak.loudness_of(p, griffin_lim(mel_TxM))
    mcds.append(quality.score(u["wav"], wav_S, family.SAMPLE_RATE)["mcd_dtw"])
  return float(np.mean(gaps)), float(np.mean(mcds))


def run(model, inputs, key, method, steps, rtol, cfg_strength=2.0):
  kwargs = dict(cfg_strength=cfg_strength, method=method, nfe=steps or 32)
  if rtol:
    kwargs.update(rtol=rtol, atol=rtol / 10)
  sample.sample(model, *inputs, key, **kwargs).mel.block_until_ready()   # compiles
  start = time.perf_counter()
  out = sample.sample(model, *inputs, key, **kwargs)
  out.mel.block_until_ready()
  return out, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dit", required=True, help="a trained dit workdir")
  parser.add_argument("--data-dir", default="data/synth_speech/1.0.0")
  parser.add_argument("--limit", type=int, default=4)
  parser.add_argument("--write", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
  args = parser.parse_args()
  model, config = Workdir(args.dit).load_model(family.FAMILY, weights="auto")
  tokens = vocab.of_workdir(args.dit, config)
  chosen, prompts = prompts_of(model, tokens, args.data_dir, args.limit)
  inputs, key = batch(prompts), jax.random.PRNGKey(0)
  reference = sample.sample(model, *inputs, key, cfg_strength=2.0, method="dopri5", rtol=1e-6, atol=1e-7)
  seconds = generated_seconds(reference, prompts)
  rows = []
  for method, steps, rtol in GRID:
    out, wall = run(model, inputs, key, method, steps, rtol)
    gap, mcd = score(out, reference, prompts, chosen)
    setting = f"{steps} steps" if steps else f"rtol {rtol:g}, atol {rtol / 10:g}"
    rows.append(f"| {method} | {setting} | {out.evaluations} | {gap:.4f} | {mcd:.2f} | "
                f"{wall:.2f} | {wall / seconds:.3f} |")
    print(rows[-1], flush=True)
  write(SECTION, f"`python benchmarks/dit_solvers.py --dit {args.dit} --limit {args.limit} --write`",
        f"The DiT: `jaxspeech train --config=configs/dit.py:tiny --workdir=workdirs/dit_tiny {TRAINED}`. "
        + __doc__.split("\n\n")[2].replace("\n", " "), reference, seconds, ("solver", "setting"), rows, args.write)


def write(section: str, command: str, setup: str, reference, seconds: float, columns: tuple[str, str],
          rows: list[str], to_results: bool) -> None:
  """Prints the section (and writes it to RESULTS.md with `to_results`)."""
  text = "\n".join([
      f"## {section}", "",
      f"{command}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}, {common.machine()}; "
      f"{common.versions(VERSIONS)}. {setup} The converged solution took {reference.evaluations} evaluations; the "
      f"batch generates {seconds:.1f} s of speech.", "",
      f"| {' | '.join(columns)} | evaluations | mel gap to converged | MCD-DTW dB | sampling s | RTF |",
      "| --- | --- | --- | --- | --- | --- | --- |", *rows, ""])
  print(text)
  if to_results:
    common.write_section(section, text)


if __name__ == "__main__":
  main()
