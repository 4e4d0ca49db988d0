"""Sweep designs: grids over config overrides, and IsoFLOP designs (Chinchilla approach 2).

A sweep config (`configs/sweeps/<name>.py`) defines `get_sweep() -> Sweep`. `plan(sweep)` turns it
into runs, each a set of `jaxspeech train` overrides with its parameter count N (from the family's
model), tokens D and FLOPs (the family's analytic count). In an IsoFLOP design every model size of
budget C trains on D = C / (6 N) tokens, i.e. `train.steps = round(D / tokens per step)`.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import importlib.util
import itertools
import math
import os
import re
from typing import Any

from jaxspeech.sweep import counts


@dataclasses.dataclass(frozen=True)
class Size:
  """A model size as a width and a depth; the sweep's `rule` maps it to config overrides."""
  width: int
  depth: int


@dataclasses.dataclass(frozen=True)
class Grid:
  """Every combination of `axes` (override → values), crossed with `sizes` when given."""
  axes: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
  sizes: Sequence[Size] = ()


@dataclasses.dataclass(frozen=True)
class IsoFlop:
  """For each compute budget C (FLOPs, counted as 6·N·D), each size trained on C / (6 N) tokens.

  `sizes` is one list for every budget or {budget: list}. Runs whose step count falls outside
  [min_steps, max_steps] are left out of the plan (and listed by `jaxspeech sweep run --dry-run`).
  """
  budgets: Sequence[float]
  sizes: Sequence[Size] | Mapping[float, Sequence[Size]]
  min_steps: int = 1
  max_steps: int = 0          # 0: no limit


@dataclasses.dataclass(frozen=True)
class Slurm:
  directives: Sequence[str] = ()   # extra `#SBATCH` options, e.g. "--partition=gpu", "--gres=gpu:1"
  setup: Sequence[str] = ()        # shell lines run before the task, e.g. "module load cuda/12.4"
  python: str = ""                 # the workers' python; default: the one running `sweep run`


@dataclasses.dataclass(frozen=True)
class Xpk:
  cluster: str = ""
  project: str = ""
  zone: str = ""
  device_type: str = ""            # e.g. v5p-8, v6e-16, h100-80gb-8
  num_slices: int = 1
  docker_image: str = ""           # an image with jaxspeech installed, the repo as its working dir
  args: Sequence[str] = ()         # extra `xpk workload create` flags, e.g. "--storage=sweeps"
  jaxspeech: str = "jaxspeech"     # the console script inside the image


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  train_config: str                                   # as for `jaxspeech train --config`, e.g. configs/ast.py:tiny
  design: Grid | IsoFlop
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # applied to every run
  rule: Callable[[int, int], Mapping[str, Any]] | None = None                # (width, depth) → overrides
  evals_per_run: int = 4            # train.eval_every = ceil(steps / evals_per_run); 0 keeps the config's
  warmup_fraction: float = 0.0      # > 0: optim.warmup_steps = round(fraction · steps)
  metric: str = "eval/loss"         # the metrics.jsonl key the fits use
  spike_ratio: float = 2.0          # a loss spike: smoothed train loss > ratio × its lowest value so far ...
  spike_rise: float = 0.5           # ... and higher than it by this much
  command: Sequence[str] = ("{python}", "-m", "jaxspeech.cli", "train")      # {python}: sys.executable
  slurm: Slurm = Slurm()
  xpk: Xpk = Xpk()


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: dict[str, Any]         # every `--config.` override of this run, train.steps included
  coords: dict[str, Any]            # the design point: budget, width, depth, grid values
  params: int                       # N
  tokens: float                     # D = steps × tokens per step
  steps: int
  flops: float                      # the family's analytic FLOPs × steps
  compute: float                    # 6 N D

  def flags(self) -> list[str]:
    return [counts.flag(k, v) for k, v in self.overrides.items()]


def load(path: str) -> Sweep:
  """The `Sweep` that `path` (a configs/sweeps/*.py file) returns from `get_sweep()`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no sweep config {path!r}")
  spec = importlib.util.spec_from_file_location(f"_jaxspeech_sweep_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep()")
  sweep = module.get_sweep()
  if not isinstance(sweep, Sweep):
    raise ValueError(f"{path}: get_sweep() returned {type(sweep).__name__}, not jaxspeech.sweep.design.Sweep")
  return sweep


def _short(x: float) -> str:
  """1e11 → '1e11', 3e+11 → '3e11', 2.5e10 → '2.5e10'."""
  return f"{x:.3g}".replace("e+", "e").replace("e0", "e")


def _name(parts: Sequence[str]) -> str:
  return re.sub(r"[^A-Za-z0-9=._-]", "_", "-".join(parts))


def _size_overrides(sweep: Sweep, size: Size | None) -> dict[str, Any]:
  if size is None:
    return {}
  if sweep.rule is None:
    raise ValueError(f"sweep {sweep.name!r} lists model sizes but has no width/depth rule")
  return dict(sweep.rule(size.width, size.depth))


def _finish(sweep: Sweep, name: str, overrides: dict[str, Any], coords: dict[str, Any], steps: int) -> Run:
  overrides = {**overrides, "train.steps": steps}
  if sweep.evals_per_run:
    overrides["train.eval_every"] = max(1, math.ceil(steps / sweep.evals_per_run))
  if sweep.warmup_fraction:
    overrides["optim.warmup_steps"] = max(1, round(sweep.warmup_fraction * steps))
  cfg = counts.resolve(sweep.train_config, overrides)
  params = counts.param_count(cfg)
  tokens = float(steps * counts.tokens_per_step(cfg))
  return Run(name=name, overrides=overrides, coords=coords, params=params, tokens=tokens, steps=steps,
             flops=counts.flops_per_step(cfg) * steps, compute=6.0 * params * tokens)


def plan(sweep: Sweep) -> tuple[list[Run], list[str]]:
  """(runs, notes): the runs in design order, and a line for each design point left out."""
  runs, notes = [], []
  frozen = counts.frozen_params(counts.resolve(sweep.train_config, sweep.overrides))
  if frozen:
    notes.append("N counts the params that train; frozen and left out: "
                 + ", ".join(f"{name} ({n:,})" for name, n in sorted(frozen.items())))
  if isinstance(sweep.design, IsoFlop):
    d = sweep.design
    for budget in d.budgets:
      sizes = d.sizes[budget] if isinstance(d.sizes, Mapping) else d.sizes
      for size in sizes:
        overrides = {**sweep.overrides, **_size_overrides(sweep, size)}
        cfg = counts.resolve(sweep.train_config, overrides)
        n, per_step = counts.param_count(cfg), counts.tokens_per_step(cfg)
        steps = round(budget / (6.0 * n) / per_step)
        name = _name([f"C{_short(budget)}", f"w{size.width}", f"d{size.depth}"])
        if steps < max(1, d.min_steps) or (d.max_steps and steps > d.max_steps):
          notes.append(f"left out {name}: N={n:,} needs {steps} steps (allowed {d.min_steps}.."
                       f"{d.max_steps or 'any'})")
          continue
        coords = {"budget": float(budget), "width": size.width, "depth": size.depth}
        runs.append(_finish(sweep, name, overrides, coords, steps))
  elif isinstance(sweep.design, Grid):
    keys = list(sweep.design.axes)
    for size in (list(sweep.design.sizes) or [None]):
      for values in itertools.product(*(sweep.design.axes[k] for k in keys)):
        point = dict(zip(keys, values))
        overrides = {**sweep.overrides, **_size_overrides(sweep, size), **point}
        steps = int(overrides.get("train.steps", counts.resolve(sweep.train_config, overrides).train.steps))
        parts = ([f"w{size.width}", f"d{size.depth}"] if size else []) + [
            f"{k.split('.')[-1]}={v}" for k, v in point.items()]
        coords = {**point, **({"width": size.width, "depth": size.depth} if size else {})}
        runs.append(_finish(sweep, _name(parts or ["run"]), overrides, coords, steps))
  else:
    raise ValueError(f"unknown design {type(sweep.design).__name__}; use design.Grid or design.IsoFlop")
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep {sweep.name!r} has duplicate runs: {sorted({n for n in names if names.count(n) > 1})}")
  return runs, notes
