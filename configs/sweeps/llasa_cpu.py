"""A CPU-sized IsoFLOP sweep: the Llasa speech LM on the codes of the default corpus made by the tiny codec.

Prerequisites, once (the codec, its codes of every split, the transcripts' sentencepiece model):

  jaxspeech train --config=configs/codec.py:tiny --workdir=workdirs/codec_tiny
  jaxspeech codec encode --workdir workdirs/codec_tiny --data-dir data/synth_speech/1.0.0 --out data/llasa_codes/1.0.0
  jaxspeech text train --dataset data/synth_speech/1.0.0 --output data/llasa_spm256.model --vocab-size 256

then

  jaxspeech sweep run --config=configs/sweeps/llasa_cpu.py --workdir=workdirs/sweep_llasa_cpu
  jaxspeech sweep fit --workdir=workdirs/sweep_llasa_cpu

Three compute budgets C (FLOPs, counted as 6·N·D), four sizes each. A token is a real (non-pad) token of the
packed rows (4 rows of 256 slots a step), text and codes both, as `llasa.tokens_per_step` reads it from the
run's first batches. The vocabulary is 256 text ids + 8 specials + the codec's 65,536 codes, and the
embedding is tied, so the embedding is most of N (65,800 × width): N runs from 1.1M to 4.3M parameters.

Wall time on 2 cores: about 40 min for `sweep run`, an estimate, made on stand-in codes (random codes of 60 to
140 frames per utterance with the test transcripts: the same shapes, so the same step time). On those the
plan is 12 runs, 1,878 steps (706 real tokens a step, 69 % of the slots) and 2.5e13 analytic FLOPs; a
40-step w32-d2 run stepped at 1.0 s a step (1.3e10 FLOP/s) with 2 cores shared (load average 9), and each run
spends about 45 s starting, compiling, evaluating and checkpointing: 2.5e13 / 1.3e10 s + 12 × 45 s ≈ 41 min.
The corpus's real codes pack differently, which changes the steps and the FLOPs (`--dry-run` shows both).
"""

from jaxspeech.sweep import design

S = design.Size


def llasa_size(width: int, depth: int) -> dict:
  """The width/depth rule: 16-wide heads (at least one), half as many KV heads, a 3× MLP."""
  heads = max(1, width // 16)
  return {"model.hidden": width, "model.layers": depth, "model.heads": heads, "model.kv_heads": max(1, heads // 2),
          "model.head_dim": 16, "model.mlp": 3 * width}


def get_sweep() -> design.Sweep:
  return design.Sweep(
      name="llasa_cpu",
      train_config="configs/llasa.py:tiny",
      overrides={
          "data.path": "data/llasa_codes/1.0.0",
          "llasa.tokenizer": "data/llasa_spm256.model",
          "llasa.seq_len": 256,
          "train.batch_size": 4,
          "train.log_every": 5,
          "train.checkpoint_every": 1000,
          "train.best_metric": "",
          "optim.lr": 3e-3,
      },
      rule=llasa_size,
      design=design.IsoFlop(
          budgets=[3e11, 1e12, 3e12],
          sizes={3e11: [S(16, 1), S(24, 2), S(32, 2), S(48, 2)],
                 1e12: [S(16, 1), S(24, 2), S(32, 2), S(48, 2)],
                 3e12: [S(24, 2), S(32, 2), S(48, 2), S(64, 2)]},
          min_steps=20),
      evals_per_run=2,
      warmup_fraction=0.1,
  )
