"""DiT training-step throughput: jaxspeech's jitted train step vs f5-tts' CFM(DiT) in PyTorch, same shapes.

    .venv/bin/python benchmarks/dit_train.py [--write] [--blocks 5] [--steps 3]

Same model (configs/dit.py:tiny's DiT), batch (8 × 376 frames = 4 s at 24 kHz, 100 mel bins, 64 characters),
flow-matching loss with infilling span and CFG dropout, clipping at 1.0 and AdamW, float32, on this CPU:
  jax    `jaxspeech.train.step.make_train_step` (the trainer's step) over the dit family's objective, fed the
         precomputed mel (the on-device log-mel is not timed); a 1-device mesh
  torch  `CFM(DiT(...))` from f5-tts 1.1.22 in train mode (dropout 0): forward (the same objective), backward,
         `clip_grad_norm_(1.0)`, `torch.optim.AdamW`; `torch.set_num_threads(2)`

Both sides are warmed up, then timed in alternating blocks so machine noise hits both; figures are medians of
frames per second (valid mel frames of the batch / step time). `--write` replaces this script's section of
benchmarks/RESULTS.md.
"""

import argparse
import dataclasses
import datetime
import os
import statistics
import sys
import time

import common

SECTION = "DiT training step (F5-TTS, issue #7)"
VERSIONS = ("jax", "jaxlib", "flax", "optax", "torch", "f5-tts", "numpy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, FRAMES, TEXT, MEL = 8, 376, 64, 100
LR, CLIP = 1e-4, 1.0
THREADS = 2

if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def config():
  import importlib.util
  spec = importlib.util.spec_from_file_location("configs_dit", os.path.join(ROOT, "configs", "dit.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config("tiny")
  cfg.mesh.data = 1
  cfg.train.ema_decay = 0.0
  cfg.optim.update(lr=LR, schedule="constant", warmup_steps=0, clip_norm=CLIP, weight_decay=0.01)
  return cfg


def inputs(seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  return (rng.normal(-5, 2, size=(BATCH, FRAMES, MEL)).astype(np.float32),
          rng.integers(0, 50, size=(BATCH, TEXT)).astype(np.int32))


def mel_family():
  """The dit family with its loss on a precomputed `batch["mel"]` (all frames valid)."""
  import jax.numpy as jnp
  from jaxspeech.dit import family
  from jaxspeech.dit.objective import flow_matching_loss

  def loss(model, batch, key, step, cfg):
    del step
    frames_B = jnp.full((batch["mel"].shape[0],), batch["mel"].shape[1])
    return flow_matching_loss(model, batch["mel"], frames_B, batch["text"], key, family.objective(cfg))[0], {}

  def batch_axes(cfg):
    del cfg
    return {"mel": ("activation_batch", None, None), "text": ("activation_batch", None)}

  return dataclasses.replace(family.FAMILY, loss=loss, batch_axes=batch_axes)


def jax_side() -> common.EngineStep:
  mel, text = inputs()
  return common.EngineStep(mel_family(), config(), {"mel": mel, "text": text})


class TorchSide:
  def __init__(self):
    import torch
    from tests import reference_stubs
    reference_stubs.stub_references()
    from f5_tts.model import CFM, DiT  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    m = config().model
    dit = DiT(dim=m.dim, depth=m.depth, heads=m.heads, dim_head=m.dim_head, ff_mult=m.ff_mult, mel_dim=m.mel_dim,
              text_num_embeds=m.text_num_embeds, text_dim=m.text_dim, conv_layers=m.conv_layers, dropout=0.0)
    self.model = CFM(transformer=dit, num_channels=MEL).train()
    decay = [p for p in self.model.parameters() if p.ndim > 1]
    no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
    self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                        {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    mel, text = inputs()
    self.mel, self.text = torch.from_numpy(mel), torch.from_numpy(text).long()
    self.lens = torch.full((BATCH,), FRAMES)

  def train_step(self) -> float:
    import torch
    t0 = time.perf_counter()
    loss, _, _ = self.model(self.mel, self.text, lens=self.lens)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
    self.optimizer.step()
    return time.perf_counter() - t0


def report(section: str, script: str, versions: tuple[str, ...], setup: str, table: list[str], summary: str,
           write: bool) -> None:
  """Prints a RESULTS.md section (provenance, setup, table, summary); `write` replaces it in RESULTS.md."""
  text = (f"## {section}\n\n`benchmarks/{script}`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
          f"{common.machine()}; load average {os.getloadavg()[0]:.1f} when measured. {common.versions(versions)}.\n\n"
          f"{setup}\n\n" + "\n".join(table) + f"\n\n{summary} Both sides ran in the same process under the same "
          "load; a 2-core machine shared with other jobs slows each side differently, so rerun on a quiet machine "
          "before quoting a ratio.\n")
  print(text)
  if write:
    common.write_section(section, text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--write", action="store_true")
  parser.add_argument("--blocks", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3, help="steps per block")
  args = parser.parse_args()
  engine, torch_side = jax_side(), TorchSide()
  for side in (engine, torch_side):
    side.train_step()
  times = {"jaxspeech": [], "f5-tts (torch)": []}
  for _ in range(args.blocks):
    times["jaxspeech"] += [engine.train_step() for _ in range(args.steps)]
    times["f5-tts (torch)"] += [torch_side.train_step() for _ in range(args.steps)]
  frames = BATCH * FRAMES
  fps = {name: frames / statistics.median(t) for name, t in times.items()}
  ratio = fps["jaxspeech"] / fps["f5-tts (torch)"]
  report(SECTION, "dit_train.py", VERSIONS,
         f"configs/dit.py:tiny's DiT, batch {BATCH} × {FRAMES} frames, float32, AdamW + clip 1.0; medians of "
         f"{args.blocks} × {args.steps} alternating steps.",
         ["| side | step (s) | frames/s |", "| --- | --- | --- |"]
         + [f"| {name} | {statistics.median(t):.3f} | {fps[name]:.0f} |" for name, t in times.items()],
         f"jaxspeech / torch: **{ratio:.2f}×**.", args.write)


if __name__ == "__main__":
  main()
