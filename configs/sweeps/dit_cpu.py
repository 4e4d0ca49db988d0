"""A CPU-sized IsoFLOP sweep: the F5-TTS DiT (flow matching) on the default corpus at 24 kHz.

  jaxspeech sweep run --config=configs/sweeps/dit_cpu.py --workdir=workdirs/sweep_dit_cpu
  jaxspeech sweep fit --workdir=workdirs/sweep_dit_cpu

No prerequisite: the runs read data/synth_speech/1.0.0 (`make corpus`) and build the character vocabulary
from its transcripts. Three compute budgets C (FLOPs, counted as 6·N·D), three sizes each; a token is one
mel frame (hop 256 at 24 kHz) of the batch's utterances, padding not counted: the 4,096-frame budget holds
2,259 of them on average. N runs from 62k to 0.94M parameters; 9 runs, 1,202 steps, 1.15e13 analytic FLOPs.

Wall time on 2 cores: about an hour for `sweep run` (an estimate, 40 to 75 min). Measured with the 2 cores
shared (load average 6 to 10): the 1e11 budget ran whole in 11 min 9 s (w32 210 s, w48 253 s, w64 206 s; final
eval loss 6.17, 8.87, 11.21: at this budget the smallest model wins), about 95 s of each run compiling,
evaluating and checkpointing, the steps at 2.7e9 FLOP/s on average; 40 steps of w96-d3 ran at 1e10 FLOP/s. The
other 6 runs' 1.05e13 FLOPs take 18 to 65 min between those rates, plus 95 s a run.
"""

from jaxspeech.sweep import design

S = design.Size


def dit_size(width: int, depth: int) -> dict:
  """The width/depth rule: 32-wide attention heads, a 2× MLP, a text embedding half the width."""
  return {"model.dim": width, "model.depth": depth, "model.heads": max(1, width // 32), "model.dim_head": 32,
          "model.text_dim": width // 2}


def get_sweep() -> design.Sweep:
  return design.Sweep(
      name="dit_cpu",
      train_config="configs/dit.py:tiny",
      overrides={
          "data.path": "data/synth_speech/1.0.0",
          "train.log_every": 5,
          "train.checkpoint_every": 1000,
          "train.best_metric": "",
          "train.ema_decay": 0.0,         # eval/loss of the weights trained, not of an average lagging short runs
          "optim.lr": 1e-3,
      },
      rule=dit_size,
      design=design.IsoFlop(
          budgets=[1e11, 3e11, 1e12],
          sizes={1e11: [S(32, 2), S(48, 2), S(64, 2)],
                 3e11: [S(48, 2), S(64, 2), S(96, 2)],
                 1e12: [S(64, 2), S(96, 2), S(128, 3)]},
          min_steps=20),
      evals_per_run=1,                # eval/loss at the end only: an eval pass costs about as much as 30 steps
      warmup_fraction=0.1,
  )
