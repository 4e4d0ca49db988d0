"""SSAST pretraining-step throughput: jaxspeech's jitted train step vs the same step in PyTorch.

    .venv/bin/python benchmarks/ssast_train.py [--write] [--variants patch,frame] [--rounds 15]

Same model, batch, masking, loss, clipping and AdamW on both sides, fp32, on this machine's CPU:
  model    hidden 256, 4 layers, 4 heads, MLP 1024, cls + distillation tokens, the two SSAST heads
           (D → D → ReLU → 256); `patch`: 16×16 patches at stride 16 (8×32 = 256 patches), cluster masking;
           `frame`: 128×2 patches (1×256), random masking; 200 of the 256 patches masked (SSAST's 400/512)
  input    a precomputed normalised fbank (8, 512 frames, 128 mel), fed to both (no Kaldi fbank in the step)
  loss     InfoNCE (cpred, negatives from the example's masked set) + 10 × MSE (gpred) on the masked patches
  jax      `jaxspeech.train.step.make_train_step` (the trainer's step: masks drawn in-graph from the step key,
           value_and_grad, global norm, the non-finite guard, clip → AdamW, state donation) over the AST
           family's SSAST objective (`family.ssast_terms`) reading `batch["fbank"]`; a 1-device mesh
  torch    transformers `ASTModel` (dropout 0; for `frame` its patch conv and position table swapped for
           128×2 ones) with a forward hook putting `mask_embed` at the masked patches, the two heads as
           `nn.Sequential`, the same masking algorithm vectorised in torch and drawn inside the step,
           `clip_grad_norm_(1.0)` and `torch.optim.AdamW` with the same groups (decay on ndim > 1)

Before timing, the torch model is loaded with the JAX model's initial params and both losses are computed on
the same batch with the same masks ("loss Δ", a check that the two steps compute the same thing). Both sides
are warmed up, then timed in `--rounds` rounds of one step per side (JAX, torch, JAX, ...): step times are
medians, and the ratio is the median of the rounds' ratios, so the machine's slow drifts cancel.
Prints a markdown table; `--write` replaces the SSAST section of benchmarks/RESULTS.md.
"""

import argparse
import datetime
import os
import statistics
import sys
import time

import common

SECTION = "SSAST pretraining step"
RESULTS = common.RESULTS
VERSIONS = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "numpy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, FRAMES, MEL, MASKED = 8, 512, 128, 200
SHAPE = dict(hidden=256, layers=4, heads=4, mlp=1024)
LR, CLIP, THREADS = 1e-4, 1.0, 2

if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def jax_config(variant: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location("configs_ast", os.path.join(ROOT, "configs", "ast.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(f"ssast_{variant}_tiny")
  cfg.model.update(max_frames=FRAMES, dtype="float32", **SHAPE)
  cfg.ssast.mask_patches = MASKED
  cfg.mesh.data = 1
  cfg.train.batch_size = BATCH
  cfg.optim.update(lr=LR, schedule="constant", warmup_steps=0, clip_norm=CLIP, weight_decay=0.01)
  return cfg


def fbank_input(seed: int = 0):
  import numpy as np
  return np.random.default_rng(seed).normal(size=(BATCH, FRAMES, MEL)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------- JAX side

class JaxSide:
  def __init__(self, variant: str):
    import dataclasses
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding
    from jaxspeech import sharding
    from jaxspeech.ast import family as ast_family
    from jaxspeech.train import optim, state as state_lib, step as step_lib

    self.cfg = cfg = jax_config(variant)

    def loss(model, batch, key, step, cfg):
      del step
      terms = ast_family.ssast_terms(model, batch["fbank"], key, cfg)
      return terms["loss"].mean(), {k: v.mean() for k, v in terms.items() if k != "loss"}

    fam = dataclasses.replace(ast_family.FAMILY, loss=loss,
                              batch_axes=lambda cfg: {"fbank": ("activation_batch", None, None)})
    self.mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    rules = [tuple(r) for r in cfg.axis_rules]
    with sharding.use_rules(self.mesh, rules):
      graphdef, abstract_params, _ = state_lib.abstract_model(fam, cfg)
      tx, schedules = optim.make(cfg.optim, cfg.train.steps, abstract_params, fam.param_groups)
      self.state, shardings = state_lib.create(fam, cfg, tx, self.mesh)
      batch_shardings = {"fbank": NamedSharding(self.mesh, sharding.logical_spec(("activation_batch", None, None)))}
      step = step_lib.make_train_step(fam, cfg, graphdef, tx, schedules, shardings, batch_shardings)
      self.batch = {"fbank": jax.device_put(fbank_input(), batch_shardings["fbank"])}
      self.params = jax.device_get(nnx.to_pure_dict(self.state.params))
      self.initial = jax.device_get((self.state.params, self.state.rest))

      def loss_with(params, rest, fbank, idx_BxM):
        terms = nnx.merge(graphdef, params, rest)(fbank, idx_BxM)
        return (cfg.ssast.nce_weight * terms["nce"] + cfg.ssast.mse_weight * terms["mse"]).mean()
      self._loss_with = jax.jit(loss_with)
      t0 = time.perf_counter()
      self.step = step.lower(self.state, self.batch).compile()
      self.compile_s = time.perf_counter() - t0
    self.params_count = sum(x.size for x in jax.tree.leaves(self.state.params))

  def masks(self, seed: int):
    import jax
    from jaxspeech.ast import family as ast_family, masking
    s = self.cfg.ssast
    grid = ast_family.model_config(self.cfg).grid()
    return jax.device_get(masking.batch_masks(jax.random.PRNGKey(seed), BATCH, grid, s.mask_patches, s.masking,
                                              tuple(s.cluster_sizes)))

  def loss_with(self, idx_BxM) -> float:
    """The loss of the initial params on the batch with masks `idx_BxM`."""
    return float(self._loss_with(*self.initial, self.batch["fbank"], idx_BxM))

  def train_step(self) -> float:
    import jax
    t0 = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics["loss"])
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------- torch side

def torch_masks(gen, batch: int, grid: tuple[int, int], count: int, kind: str, sizes=(3, 4, 5)):
  """`jaxspeech.ast.masking.batch_masks`'s algorithm (not its random numbers), vectorised in torch."""
  import torch
  f, t = grid
  n = f * t
  rank_BxN = torch.rand(batch, n, generator=gen).argsort(1)
  if kind == "cluster":
    c_B = torch.tensor(sizes)[torch.randint(len(sizes), (batch,), generator=gen)]
    centres_BxK = torch.randint(n, (batch, count), generator=gen)
    row_lo = (centres_BxK // t - c_B[:, None] // 2)[..., None]
    col_lo = (centres_BxK % t - c_B[:, None] // 2)[..., None]
    rows, cols, c = torch.arange(n) // t, torch.arange(n) % t, c_B[:, None, None]
    covers_BxKxN = (rows >= row_lo) & (rows < row_lo + c) & (cols >= col_lo) & (cols < col_lo + c)
    first_BxN = torch.where(covers_BxKxN.any(1), covers_BxKxN.to(torch.uint8).argmax(1), count)
    rank_BxN = first_BxN * n + rank_BxN
  return rank_BxN.argsort(1)[:, :count].sort(1).values


class TorchSide:
  def __init__(self, variant: str, jax_side: JaxSide):
    import torch
    import transformers
    from jaxspeech.ast import convert
    from jaxspeech.ast.family import model_config
    from jaxspeech.convert import mapping

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    cfg = jax_side.cfg
    self.m = m = model_config(cfg)
    (self.pf, self.pt), self.grid, s = m.patch_shape, m.grid(), cfg.ssast
    self.count, self.kind, self.sizes = s.mask_patches, s.masking, tuple(s.cluster_sizes)
    hf = transformers.ASTConfig(
        hidden_size=m.hidden, num_hidden_layers=m.layers, num_attention_heads=m.heads, intermediate_size=m.mlp,
        max_length=FRAMES, num_mel_bins=MEL, patch_size=16, frequency_stride=16, time_stride=16,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=m.layer_norm_eps)
    self.ast = transformers.ASTModel(hf)
    d, p, n = m.hidden, self.pf * self.pt, self.grid[0] * self.grid[1]
    if variant == "frame":
      emb = self.ast.embeddings
      emb.patch_embeddings.projection = torch.nn.Conv2d(1, d, (self.pf, self.pt), stride=(self.pf, self.pt))
      emb.position_embeddings = torch.nn.Parameter(torch.zeros(1, n + 2, d))
    self.mask_embed = torch.nn.Parameter(torch.nn.init.xavier_normal_(torch.zeros(1, 1, d)))
    self.cpred = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, p))
    self.gpred = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, p))
    self.mask_BxN = None
    self.ast.embeddings.patch_embeddings.register_forward_hook(
        lambda module, inputs, out: torch.where(self.mask_BxN[..., None], self.mask_embed.to(out.dtype), out))

    # The JAX model's initial params, so both sides start from (and check) the same computation.
    params = jax_side.params
    table = convert.tables(m)["ASTModel (transformers 5)"]
    encoder = mapping.to_hf(mapping.flatten(params["encoder"]), table, convert.param_shapes(m), "SSAST encoder")
    self.ast.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in encoder.items()}, strict=True)
    with torch.no_grad():
      self.mask_embed.copy_(torch.from_numpy(params["mask_embed"].copy()))
      for head, ours in ((self.cpred, params["cpred"]), (self.gpred, params["gpred"])):
        for i, fc in ((0, "fc1"), (2, "fc2")):
          head[i].weight.copy_(torch.from_numpy(ours[fc]["kernel"].T.copy()))
          head[i].bias.copy_(torch.from_numpy(ours[fc]["bias"].copy()))

    self.params = [*self.ast.parameters(), self.mask_embed, *self.cpred.parameters(), *self.gpred.parameters()]
    self.ast.train()
    self.opt = torch.optim.AdamW([{"params": [q for q in self.params if q.ndim > 1], "weight_decay": 0.01},
                                  {"params": [q for q in self.params if q.ndim <= 1], "weight_decay": 0.0}],
                                 lr=LR, betas=(0.9, 0.999), eps=1e-8)
    self.gen = torch.Generator().manual_seed(0)
    self.x = torch.from_numpy(fbank_input())
    self.attn = self.ast.config._attn_implementation  # pylint: disable=protected-access

  def loss(self, idx_BxM):
    import torch
    n = self.grid[0] * self.grid[1]
    self.mask_BxN = torch.zeros(BATCH, n, dtype=torch.bool).scatter_(1, idx_BxM, True)
    h_BxNxD = self.ast(self.x).last_hidden_state[:, 2:]
    h_BxMxD = torch.gather(h_BxNxD, 1, idx_BxM[..., None].expand(-1, -1, h_BxNxD.shape[-1]))
    patches = torch.nn.functional.unfold(self.x.transpose(1, 2)[:, None], (self.pf, self.pt),
                                         stride=(self.pf, self.pt)).transpose(1, 2)
    target_BxMxP = torch.gather(patches, 1, idx_BxM[..., None].expand(-1, -1, patches.shape[-1]))
    total_BxMxM = torch.bmm(target_BxMxP, self.cpred(h_BxMxD).transpose(1, 2))
    nce = -torch.diagonal(torch.log_softmax(total_BxMxM, -1), dim1=1, dim2=2).mean()
    mse = torch.mean((self.gpred(h_BxMxD) - target_BxMxP) ** 2)
    return nce + 10 * mse

  def train_step(self) -> float:
    import torch
    t0 = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    idx = torch_masks(self.gen, BATCH, self.grid, self.count, self.kind, self.sizes)
    self.loss(idx).backward()
    torch.nn.utils.clip_grad_norm_(self.params, CLIP)
    self.opt.step()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------------ timing

def cpu_share(t0_cpu: float, t0_wall: float) -> float:
  """Fraction of the machine's CPU time that other processes used since (t0_cpu, t0_wall)."""
  ours = time.process_time() - t0_cpu
  total = (time.perf_counter() - t0_wall) * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count())
  busy = _busy_cpu_seconds() - _BUSY0 if _BUSY0 is not None else None
  if busy is None or total <= 0:
    return float("nan")
  return max(0.0, min(1.0, (busy - ours) / total))


def _busy_cpu_seconds():
  try:
    with open("/proc/stat") as f:
      fields = [float(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return None


_BUSY0 = None


def run(variant: str, rounds: int) -> dict:
  import numpy as np
  import torch
  jax_side = JaxSide(variant)
  torch_side = TorchSide(variant, jax_side)
  idx = jax_side.masks(seed=1)
  jax_loss = jax_side.loss_with(idx)
  with torch.no_grad():
    torch_loss = float(torch_side.loss(torch.from_numpy(np.array(idx)).long()))
  for side in (jax_side, torch_side):
    for _ in range(2):
      side.train_step()
  times = {"jax": [], "torch": []}
  for _ in range(rounds):
    times["jax"].append(jax_side.train_step())
    times["torch"].append(torch_side.train_step())
  ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
  ratio = statistics.median(t / j for j, t in zip(times["jax"], times["torch"]))
  return dict(variant=variant, jax_ms=ms["jax"], torch_ms=ms["torch"], ratio=ratio,
              compile_s=jax_side.compile_s, params=jax_side.params_count, jax_loss=jax_loss, torch_loss=torch_loss,
              n=len(times["jax"]), attn=torch_side.attn, threads=torch.get_num_threads())


DESCRIPTIONS = {"patch": "patch 16×16 / stride 16, cluster masking", "frame": "frame 128×2, random masking"}


def table(rows: list[dict]) -> str:
  lines = ["| variant | jaxspeech ms/step | PyTorch ms/step | PyTorch / jaxspeech | loss Δ at init | JAX compile s "
           "| n |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {DESCRIPTIONS[r['variant']]} | {r['jax_ms']:.0f} | {r['torch_ms']:.0f} | {r['ratio']:.2f}× | "
                 f"{abs(r['jax_loss'] - r['torch_loss']):.1e} | {r['compile_s']:.1f} | {r['n']} rounds |")
  return "\n".join(lines)


def section(rows: list[dict], args, share: float, load: str) -> str:
  r0 = rows[0]
  return f"""## {SECTION}

Written by `benchmarks/ssast_train.py --write`.

- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d} (UTC)
- Machine: {common.machine()}; load average {load} before the run; other processes used
  {100 * share:.0f} % of the CPU time during it
- Software: {common.versions(VERSIONS)}
- Shapes: batch {BATCH}, {FRAMES} frames × {MEL} mel; hidden {SHAPE['hidden']}, {SHAPE['layers']} layers, \
{SHAPE['heads']} heads, MLP {SHAPE['mlp']} ({r0['params'] / 1e6:.2f} M params); 256 patches + 2 tokens, {MASKED} masked; fp32

{table(rows)}

Notes:
- One training step each: masks drawn inside the step, forward, InfoNCE + 10 × MSE, backward, clip 1.0, AdamW.
  JAX: the trainer's `make_train_step` on a 1-device mesh (XLA's CPU thread pool); PyTorch: transformers
  `ASTModel` ({r0['attn']} attention, {r0['threads']} threads) with a forward hook for `mask_embed`.
- {args.rounds} rounds of one step per side, after 2 warm-up steps; PyTorch / jaxspeech is the median of the
  rounds' step-time ratios.
- "loss Δ at init": |JAX − PyTorch| loss of the same initial params on the same batch and masks (float32).
- The SSAST parts (in-graph masks, the two heads, InfoNCE) are a small share of the JAX step: the gradient of the
  plain AST encoder alone on this batch takes about as long, so the gap to PyTorch is the encoder's.
- PyTorch / jaxspeech > 1 means jaxspeech is faster. Other processes' load slows both sides; rerun on an idle
  machine before comparing against these figures.
"""


def main():
  global _BUSY0
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="patch,frame")
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--write", action="store_true", help=f"replace the '{SECTION}' section of RESULTS.md")
  args = parser.parse_args()
  load = ", ".join(f"{x:.2f}" for x in os.getloadavg()[:1])
  t0_cpu, t0_wall, _BUSY0 = time.process_time(), time.perf_counter(), _busy_cpu_seconds()
  rows = []
  for variant in args.variants.split(","):
    rows.append(run(variant, args.rounds))
    r = rows[-1]
    print(f"{variant}: jax {r['jax_ms']:.0f} ms, torch {r['torch_ms']:.0f} ms, ratio {r['ratio']:.2f}, "
          f"loss jax {r['jax_loss']:.5f} torch {r['torch_loss']:.5f}", file=sys.stderr)
  share = cpu_share(t0_cpu, t0_wall)
  print(table(rows))
  if args.write:
    common.write_section(SECTION, section(rows, args, share, load))
    print(f"wrote the '{SECTION}' section of {RESULTS}")


if __name__ == "__main__":
  main()
