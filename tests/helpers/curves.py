"""Training-curve parity: jaxspeech's trainer step and a PyTorch reference trainer, from the same weights, fed the
same batches in the same order, each drawing its own noise. tests/helpers/curves_dit.py and curves_llasa.py
build the two sides of each family; benchmarks/curve_parity.py and tests/test_curve_parity.py run them."""

import dataclasses
from collections.abc import Callable, Iterable

import jax
import numpy as np
import torch
from flax import nnx

from jaxspeech import sharding
from jaxspeech.convert import mapping
from jaxspeech.train import optim
from jaxspeech.train import state as state_lib
from jaxspeech.train import trainer


class Engine:
  """jaxspeech's compiled train step (the family's loss, clipping, AdamW and the schedule of `cfg.optim` over
  `cfg.train.steps`) on one device, starting from `params` (dotted paths)."""

  def __init__(self, family, cfg, params: dict[str, np.ndarray]):
    self.run = trainer.Trainer(cfg, "", jax.devices()[:1], family=family)
    with sharding.use_rules(self.run.mesh, self.run.rules):
      state, shardings = state_lib.create(family, cfg, self.run.tx, self.run.mesh)
    nnx.replace_by_pure_dict(state.params, mapping.unflatten(params))
    self.state = state.replace(params=jax.device_put(state.params, shardings.params))

  def step(self, batch) -> tuple[float, float]:
    """(loss, learning rate) of one update on `batch` (host arrays)."""
    placed = {k: jax.device_put(v, self.run.batch_shardings[k]) for k, v in batch.items()}
    with sharding.use_rules(self.run.mesh, self.run.rules):
      self.state, metrics = self.run.train_step(self.state, placed)
    return float(metrics["loss"]), float(metrics["lr"])


@dataclasses.dataclass
class Reference:
  """A PyTorch trainer's update: loss, backward, clip the global norm, optimizer step, scheduler step."""
  model: torch.nn.Module
  loss: Callable[[dict], torch.Tensor]   # of a jaxspeech batch
  optimizer: torch.optim.Optimizer
  scheduler: torch.optim.lr_scheduler.LRScheduler
  clip_norm: float

  def step(self, batch) -> tuple[float, float]:
    lr = self.scheduler.get_last_lr()[0]
    loss = self.loss(batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
    self.optimizer.step()
    self.scheduler.step()
    self.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), lr


def adamw(named_params: Iterable[tuple[str, torch.nn.Parameter]], decays: Callable[[str], bool], optim_cfg
          ) -> torch.optim.AdamW:
  """`torch.optim.AdamW` with `optim_cfg`'s betas, eps and weight decay on the params `decays` names."""
  groups = {True: [], False: []}
  for name, param in named_params:
    groups[decays(name)].append(param)
  return torch.optim.AdamW([{"params": groups[True], "weight_decay": optim_cfg.weight_decay},
                            {"params": groups[False], "weight_decay": 0.0}],
                           lr=optim_cfg.lr, betas=(optim_cfg.b1, optim_cfg.b2), eps=optim_cfg.eps)


def our_decay(params: dict[str, np.ndarray]) -> dict[str, bool]:
  """Dotted path -> whether jaxspeech's AdamW decays it (`optim.decay_mask`)."""
  return {k: bool(v) for k, v in mapping.flatten(optim.decay_mask(mapping.unflatten(params))).items()}


def lr_variants(family, cfg, params: dict[str, np.ndarray], scales: tuple[float, ...]) -> dict[str, Engine]:
  """Our side with a wrong recipe: the learning rate × each of `scales`."""
  out = {}
  for scale in scales:
    wrong = cfg.copy_and_resolve_references()
    wrong.optim.lr *= scale
    out[f"jaxspeech lr ×{scale:g}"] = Engine(family, wrong, params)
  return out


def train(sides: dict, batches: Iterable[dict], steps: int, report_every: int = 0) -> dict[str, dict[str, list[float]]]:
  """{side: {"loss": [...], "lr": [...]}}: every side takes each of the first `steps` batches in turn; every
  `report_every` steps (0: never) prints each side's mean loss since the last report."""
  curves = {name: {"loss": [], "lr": []} for name in sides}
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # torch's idle OpenMP threads spin while XLA's run: both sides slow down several-fold
  try:
    for step, batch in zip(range(1, steps + 1), batches):
      for name, side in sides.items():
        loss, lr = side.step(batch)
        curves[name]["loss"].append(loss)
        curves[name]["lr"].append(lr)
      if report_every and step % report_every == 0:
        print(f"step {step}: " + ", ".join(f"{name} {tail_mean(c['loss'], report_every):.4f}"
                                            for name, c in curves.items()), flush=True)
  finally:
    torch.set_num_threads(threads)
  return curves


def tail_mean(losses: list[float], tail: int) -> float:
  return float(np.mean(losses[-tail:]))


def relative_gap(ours: list[float], reference: list[float], tail: int) -> float:
  """|mean(ours) − mean(reference)| / mean(reference) over the last `tail` steps."""
  return abs(tail_mean(ours, tail) - tail_mean(reference, tail)) / tail_mean(reference, tail)


def gap_stderr(ours: list[float], reference: list[float], tail: int) -> float:
  """The standard error of `relative_gap`'s numerator over its denominator: of the mean per-step difference."""
  diffs = np.asarray(ours[-tail:]) - np.asarray(reference[-tail:])
  return float(diffs.std(ddof=1) / np.sqrt(tail)) / tail_mean(reference, tail)
