"""Training-curve parity: jaxspeech's trainer against the reference trainer, both from the same initial weights,
on the same batches in the same order, with the same optimiser and schedule, each side drawing its own noise.

    .venv/bin/python benchmarks/curve_parity.py --family dit|llasa [--steps 300] [--write]

dit    our dit family vs f5-tts' `CFM(DiT)` under F5's trainer recipe (tests/helpers/curves_dit.py)
llasa  our llasa family vs transformers' `LlamaForCausalLM` under the LLaSA recipe (tests/helpers/curves_llasa.py)

A loss-statistics comparison: the curves cannot match step for step (the noise, masks and CFG drops differ), so
the figure is the relative gap of the mean loss over the last `--tail` steps (target ≤ 3 %), with its standard
error from the per-step differences. Writes benchmarks/curve_parity_<family>.json (both curves and learning
rates) and .png (the curves side by side); `--write` replaces this family's section of benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
TOLERANCE = 0.03
REFERENCE = {"dit": "f5-tts", "llasa": "transformers"}
VERSIONS = {"dit": ("jax", "flax", "optax", "torch", "f5-tts", "numpy"),
            "llasa": ("jax", "flax", "optax", "torch", "transformers", "numpy")}
SETUP = {
    "dit": "configs/dit.py:tiny's recipe (AdamW lr 1e-3, β2 0.999, weight decay 0.01, clip 1.0, linear warmup "
           "then linear decay) at dim 64, depth 2, 4 heads of 16, text 32, 1 ConvNeXt block, on the dit family's "
           "frame-budget batches (≈{budget} mel frames, buckets 6 s and 10 s) of `{corpus}`'s train split; "
           "float32, no EMA. F5's side is f5-tts' `CFM(DiT)` with its trainer's AdamW, `SequentialLR` of two "
           "`LinearLR` (1e-8 → 1 → 1e-8) and `clip_grad_norm_`, fed the same log-mels. Set the same on both "
           "sides: dropout 0 (F5 trains with 0.1, ours has none), and our weight-decay mask (F5 decays biases "
           "and norms too). Left as they are: F5 draws the CFG drops once per batch, ours per example (the same "
           "rates), and F5 pads each batch to its longest clip, ours to the bucket.",
    "llasa": "configs/llasa.py:tiny's recipe (AdamW lr 3e-3, β2 0.95, weight decay 0.01, clip 1.0, linear warmup "
             "then cosine decay) and model (hidden 64, 2 layers, 4 heads, 2 KV heads, MLP 192, tied) with 64 codes "
             "and a 256-piece tokenizer, on the llasa family's packed batches (4 rows of 512 tokens) of a code "
             "dataset of `{corpus}`'s transcripts (two codes per character, the second one of 8 at random, so "
             "the loss has a floor near ln 8 / 2 ≈ 1.04 per code); float32. Neither side has dropout or noise: "
             "the curves may agree step for step. The transformers side unpacks each batch "
             "into one utterance a row, labels −100 before <|SPEECH_GENERATION_START|> (LLaSA's masking), HF "
             "`Trainer`'s decay groups and `get_cosine_schedule_with_warmup`.",
}

if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def plot(curves: dict, family: str, path: str) -> None:
  """Each side's loss in its own panel (shared axes; raw and a 10-step mean), then both learning rates."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  axes[1].sharey(axes[0])
  for ax, (name, curve), color, style in zip(axes, curves.items(), ("tab:blue", "tab:orange"), ("-", "--")):
    loss = np.asarray(curve["loss"])
    ax.plot(loss, color=color, alpha=0.3, linewidth=0.7, label="per step")
    ax.plot(np.arange(9, len(loss)), np.convolve(loss, np.ones(10) / 10, mode="valid"), color=color,
            label="10-step mean")
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title=f"{family}: {name}")
    ax.legend()
    axes[2].plot(curve["lr"], color=color, linestyle=style, label=name)
  axes[2].set(xlabel="step", ylabel="learning rate", title="learning rate")
  axes[2].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def run(family: str, steps: int, corpus: str, root: str) -> dict:
  from tests.helpers import curves  # pylint: disable=import-outside-toplevel
  if family == "dit":
    from tests.helpers import curves_dit  # pylint: disable=import-outside-toplevel
    sides, batches = curves_dit.sides(corpus, steps)
  else:
    from tests.helpers import curves_llasa  # pylint: disable=import-outside-toplevel
    sides, batches = curves_llasa.sides(corpus, root, steps)
  return curves.train(sides, batches, steps, report_every=25)


def percent(x: float) -> str:
  return f"{100 * x:.2g}%"


def section(family: str, steps: int, tail: int, corpus: str, result: dict, seconds: float) -> str:
  from tests.helpers import curves  # pylint: disable=import-outside-toplevel
  ours, theirs = result["jaxspeech"]["loss"], result[REFERENCE[family]]["loss"]
  gap, stderr = curves.relative_gap(ours, theirs, tail), curves.gap_stderr(ours, theirs, tail)
  rows = [f"| {name} | {c['loss'][0]:.3f} | {curves.tail_mean(c['loss'][:10], 10):.3f} | "
          f"{curves.tail_mean(c['loss'], tail):.4f} |" for name, c in result.items()]
  verdict = "within" if gap <= TOLERANCE else "outside"
  return "\n".join([
      f"## Training-curve parity: {family} vs {REFERENCE[family]} (issue #20)", "",
      f"`benchmarks/curve_parity.py --family {family} --steps {steps}`: {common.machine()}; "
      f"{common.versions(VERSIONS[family])}; {time.strftime('%Y-%m-%d', time.gmtime())} UTC; {seconds / 60:.0f} min.",
      "", SETUP[family].format(budget=4096, corpus=corpus), "",
      "A loss-statistics comparison, not a step-for-step one: each side draws its own noise, time steps, masks "
      f"and dropout. Tolerance: the means over the last {tail} steps within {TOLERANCE:.0%} of each other.", "",
      f"| side | loss at step 1 | mean of steps 1–10 | mean of the last {tail} steps |", "| --- | ---: | ---: | ---: |",
      *rows, "",
      f"Relative gap of the last-{tail} means: **{percent(gap)}** (standard error {percent(stderr)}, from the "
      f"per-step differences), {verdict} the {TOLERANCE:.0%} tolerance; at two standard errors the gap is below "
      f"{percent(gap + 2 * stderr)}. The largest per-step relative difference is "
      f"{percent(max(abs(a - b) / b for a, b in zip(ours, theirs)))}. Curves: "
      f"`benchmarks/curve_parity_{family}.png`, `.json`. `tests/test_curve_parity.py` (slow) runs the same code "
      "for fewer steps.", ""])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--family", choices=sorted(REFERENCE), required=True)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--tail", type=int, default=100, help="the last steps whose mean losses are compared")
  parser.add_argument("--corpus", default="data/synth_speech/1.0.0")
  parser.add_argument("--write", action="store_true", help=f"write the figures to {common.RESULTS}")
  args = parser.parse_args()
  start = time.time()
  with tempfile.TemporaryDirectory() as root:
    result = run(args.family, args.steps, args.corpus, root)
  seconds = time.time() - start
  stem = os.path.join(HERE, f"curve_parity_{args.family}")
  with open(stem + ".json", "w") as f:
    json.dump({"family": args.family, "steps": args.steps, "tail": args.tail, "curves": result}, f)
  plot(result, args.family, stem + ".png")
  text = section(args.family, args.steps, args.tail, args.corpus, result, seconds)
  print(text)
  if args.write:
    common.write_section(text.splitlines()[0].removeprefix("## "), text)


if __name__ == "__main__":
  main()
