"""A CPU-sized IsoFLOP sweep: AST speaker classification on the default corpus (2-core CPU, under 20 min).

  jaxspeech sweep run --config=configs/sweeps/ast_cpu.py --workdir=workdirs/sweep_ast_cpu
  jaxspeech sweep fit --workdir=workdirs/sweep_ast_cpu

Three compute budgets C (FLOPs, counted as 6·N·D), each with the model sizes around its optimum; every
size trains on D = C / (6 N) tokens, a token being one 16×16 fbank patch (64 per 1.3 s clip, 2,048 per
batch of 32). N runs from 1.6k to 24k parameters: speaker ID on this corpus saturates beyond that at
CPU budgets. The same file drives a cluster: `--backend slurm` or `--backend xpk` with the sections
below filled in (`--dry-run` prints the script or the commands). The other families' sweeps:
`configs/sweeps/llasa_cpu.py`, `configs/sweeps/dit_cpu.py`.
"""

from jaxspeech.sweep import design

S = design.Size


def ast_size(width: int, depth: int) -> dict:
  """The width/depth rule: 16-wide attention heads (at least one) and a 4× MLP."""
  return {"model.hidden": width, "model.layers": depth, "model.heads": max(1, width // 16),
          "model.mlp": 4 * width}


def get_sweep() -> design.Sweep:
  return design.Sweep(
      name="ast_cpu",
      train_config="configs/ast.py:tiny",
      overrides={
          "data.path": "data/synth_speech/1.0.0",
          "model.max_frames": 128,          # 8 × 8 patches per example
          "train.batch_size": 32,
          "train.log_every": 5,
          "train.checkpoint_every": 500,
          "train.best_metric": "",
          "optim.lr": 2e-3,
      },
      rule=ast_size,
      design=design.IsoFlop(
          budgets=[1e10, 3e10, 1e11],
          sizes={1e10: [S(4, 1), S(8, 1), S(16, 1)],
                 3e10: [S(4, 1), S(8, 1), S(16, 1), S(24, 1)],
                 1e11: [S(8, 1), S(16, 1), S(24, 1), S(32, 1)]},
          min_steps=20),
      evals_per_run=2,                      # eval/loss at mid-run and at the end
      warmup_fraction=0.1,                  # cosine decay over each run's own length
      slurm=design.Slurm(directives=("--time=00:30:00", "--cpus-per-task=2", "--mem=8G")),
      xpk=design.Xpk(cluster="my-cluster", project="my-project", zone="us-east5-a", device_type="v5p-8",
                     docker_image="us-docker.pkg.dev/my-project/jaxspeech/jaxspeech:latest"),
  )
