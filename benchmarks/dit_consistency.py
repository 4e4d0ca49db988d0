"""Few-step sampling by consistency distillation against the teacher's ODE sampling (issue #23, part 2).

    jaxspeech train --config=configs/dit.py:tiny --workdir=workdirs/dit_tiny --config.train.steps=400 \
        --config.train.ema_decay=0.99 --config.optim.warmup_steps=40 --config.train.eval_every=0
    jaxspeech train --config=configs/dit.py:consistency_tiny --workdir=workdirs/dit_cd_tiny \
        --config.train.init_from=workdirs/dit_tiny
    .venv/bin/python benchmarks/dit_consistency.py --teacher workdirs/dit_tiny --student workdirs/dit_cd_tiny \
        [--limit 4] [--write]

The first `limit` test_unseen utterances (unseen speakers), each prompted by another clip of its speaker, as
benchmarks/dit_solvers.py samples them (one batch, EMA weights, the same noise for every row). The teacher
samples with Euler, CFG 2 and sway −1 on F5's grids (EPSS at 16 steps); the student with the multistep
consistency sampler, no CFG, sway −1. Per row: flow evaluations (the teacher's each a forward of 2 rows per
utterance, the student's of 1), the mel's mean distance to the teacher's converged solution (dopri5 at rtol 1e-5),
MCD-DTW of its Griffin-Lim audio against the recording, and the sampling seconds and RTF of the batch (compiled;
one run).
"""

import argparse

import jax

import dit_solvers
from jaxspeech.dit import family, sample, vocab
from jaxspeech.workdir import Workdir

SECTION = "DiT few-step sampling: consistency distillation against the teacher (issue #23)"
# (who, method, steps, CFG)
GRID = ([("teacher", "euler", n, 2.0) for n in (1, 2, 4, 16, 32)]
        + [("student", "consistency", n, 0.0) for n in (1, 2, 4, 8)])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--teacher", required=True, help="the trained dit workdir")
  parser.add_argument("--student", required=True, help="its consistency-distilled workdir")
  parser.add_argument("--data-dir", default="data/synth_speech/1.0.0")
  parser.add_argument("--limit", type=int, default=4)
  parser.add_argument("--write", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
  args = parser.parse_args()
  models = {who: Workdir(path).load_model(family.FAMILY, weights="auto")[0]
            for who, path in (("teacher", args.teacher), ("student", args.student))}
  config = Workdir(args.teacher).config
  tokens = vocab.of_workdir(args.teacher, config)
  chosen, prompts = dit_solvers.prompts_of(models["teacher"], tokens, args.data_dir, args.limit)
  inputs, key = dit_solvers.batch(prompts), jax.random.PRNGKey(0)
  reference = sample.sample(models["teacher"], *inputs, key, cfg_strength=2.0, method="dopri5", rtol=1e-5,
                            atol=1e-6)
  seconds = dit_solvers.generated_seconds(reference, prompts)
  rows = []
  for who, method, steps, cfg_strength in GRID:
    out, wall = dit_solvers.run(models[who], inputs, key, method, steps, None, cfg_strength)
    gap, mcd = dit_solvers.score(out, reference, prompts, chosen)
    grid = "EPSS, sway −1" if method == "euler" and steps in sample.EPSS else "sway −1"
    rows.append(f"| {who} | {method}, {steps} steps ({grid}), CFG {cfg_strength:g} | {out.evaluations} | "
                f"{gap:.4f} | {mcd:.2f} | {wall:.2f} | {wall / seconds:.3f} |")
    print(rows[-1], flush=True)
  student_config = Workdir(args.student).config
  dit_solvers.write(
      SECTION, f"`python benchmarks/dit_consistency.py --teacher {args.teacher} --student {args.student} --limit "
      f"{args.limit} --write`",
      f"The teacher: `jaxspeech train --config=configs/dit.py:tiny --workdir={args.teacher} {dit_solvers.TRAINED}`; "
      f"the student: `jaxspeech train --config=configs/dit.py:consistency_tiny --workdir={args.student} "
      f"--config.train.init_from={args.teacher}` ({student_config['train']['steps']} steps, distill "
      f"{student_config['distill']}). " + __doc__.split("\n\n")[2].replace("\n", " "),
      reference, seconds, ("model", "sampler"), rows, args.write)


if __name__ == "__main__":
  main()
