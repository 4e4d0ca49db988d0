"""Scaling-law fits (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models").

Approach 3, the parametric law: L(N, D) = E + A / N^α + B / D^β, written as
  log L̂ = LSE(a − α log N, b − β log D, e),   A = e^a, B = e^b, E = e^e,
fitted by minimising Σ Huber_δ(log L̂ − log L) (δ = 1e-3) with L-BFGS from every point of an
initialisation grid; the best result wins. Its compute-optimal allocation under C = 6 N D is
  N_opt(C) = G (C/6)^a,  D_opt(C) = G⁻¹ (C/6)^b,  a = β/(α+β),  b = α/(α+β),  G = (αA / (βB))^(1/(α+β)).

Approach 2, IsoFLOP minima: per budget C a parabola of loss against ln N gives N*(C) at its vertex
and D*(C) = C / (6 N*); least squares on log-log over the budgets whose vertex lies within the sizes
they ran gives N* ∝ C^a and D* ∝ C^b.

Confidence intervals are bootstrap percentiles (2.5 %, 97.5 %): approach 3 resamples runs with
replacement and refits from the best few starting points of the full fit; approach 2 resamples runs
within each budget.
"""

import contextlib
import dataclasses
import functools
import itertools
import math
from typing import Any

import numpy as np
from scipy import optimize

DELTA = 1e-3
# Hoffmann et al.'s grid: α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}.
GRID = dict(alpha=np.arange(0.0, 2.01, 0.5), beta=np.arange(0.0, 2.01, 0.5), e=np.arange(-1.0, 1.01, 0.5),
            a=np.arange(0.0, 25.1, 5.0), b=np.arange(0.0, 25.1, 5.0))
BOOTSTRAP_STARTS = 4


def _objective(theta, log_n, log_d, log_l, delta):
  """Σ Huber_δ(LSE(a − α log N, b − β log D, e) − log L) / δ and its gradient (θ = a, b, e, α, β)."""
  a, b, e, alpha, beta = theta
  z = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
  top = z.max(axis=0)
  w = np.exp(z - top)
  total = w.sum(axis=0)
  r = top + np.log(total) - log_l
  w /= total
  small = np.abs(r) <= delta
  value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum() / delta
  g = np.clip(r, -delta, delta) / delta
  grad = np.array([(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(),
                   -(g * w[0] * log_n).sum(), -(g * w[1] * log_d).sum()])
  return value, grad


def predict(law: dict[str, float], n, d):
  return law["E"] + law["A"] / np.power(n, law["alpha"]) + law["B"] / np.power(d, law["beta"])


def _law(theta, value) -> dict[str, float]:
  a, b, e, alpha, beta = (float(t) for t in theta)
  out = dict(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, objective=float(value))
  if alpha > 0 and beta > 0:
    out.update(a=beta / (alpha + beta), b=alpha / (alpha + beta),
               G=(alpha * out["A"] / (beta * out["B"])) ** (1.0 / (alpha + beta)))
  return out


def _one_blas_thread(fn):
  """Runs `fn` with BLAS on one thread: L-BFGS-B's BLAS calls on 5-vectors ran 50× slower with OpenBLAS
  threads on a busy 2-core machine. Uses threadpoolctl when it is installed."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      import threadpoolctl  # pylint: disable=import-outside-toplevel
      limit = threadpoolctl.threadpool_limits(1, user_api="blas")
    except ImportError:
      limit = contextlib.nullcontext()
    with limit:
      return fn(*args, **kwargs)
  return wrapped


def _minimise(starts, log_n, log_d, log_l, delta):
  results = []
  for theta0 in starts:
    res = optimize.minimize(_objective, np.asarray(theta0, float), args=(log_n, log_d, log_l, delta), jac=True,
                            method="L-BFGS-B", options=dict(maxiter=1000))
    if np.all(np.isfinite(res.x)) and np.isfinite(res.fun):
      results.append((float(res.fun), res.x))
  results.sort(key=lambda r: r[0])
  return results


def _screen(starts: np.ndarray, log_n, log_d, log_l, delta, keep: int) -> np.ndarray:
  """The `keep` grid points with the lowest objective, evaluated all at once."""
  if keep <= 0 or keep >= len(starts):
    return starts
  a, b, e, alpha, beta = (starts[:, i:i + 1] for i in range(5))
  z = np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e + 0 * log_n))
  r = np.logaddexp.reduce(z, axis=0) - log_l
  value = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1)
  return starts[np.argsort(value, kind="stable")[:keep]]


@_one_blas_thread
def fit_law(n, d, loss, delta: float = DELTA, grid: dict[str, Any] | None = None, starts: int = 128
            ) -> tuple[dict[str, float], list]:
  """(law, starts for bootstrap refits): the best L-BFGS result over the initialisation grid.

  L-BFGS runs from the `starts` grid points with the lowest objective (every point when `starts` is
  0); all 4,500 points of Hoffmann et al.'s grid take minutes on a CPU, and the screened set finds the
  same optimum on our tests.
  """
  log_n, log_d, log_l = np.log(np.asarray(n, float)), np.log(np.asarray(d, float)), np.log(np.asarray(loss, float))
  grid = GRID if grid is None else grid
  points = np.array([(a, b, e, alpha, beta) for alpha, beta, e, a, b in
                     itertools.product(grid["alpha"], grid["beta"], grid["e"], grid["a"], grid["b"])], float)
  starts = _screen(points, log_n, log_d, log_l, delta, starts)
  results = _minimise(starts, log_n, log_d, log_l, delta)
  if not results:
    raise ValueError("the L(N, D) fit found no finite solution")
  # Distinct optima, best first, as starting points for the bootstrap refits.
  refit_starts = []
  for _, x in results:
    if all(np.max(np.abs(x - y)) > 1e-3 for y in refit_starts):
      refit_starts.append(x)
    if len(refit_starts) == BOOTSTRAP_STARTS:
      break
  law = _law(results[0][1], results[0][0])
  pred = np.log(predict(law, np.exp(log_n), np.exp(log_d)))
  law["rmse_log"] = float(np.sqrt(np.mean((pred - log_l) ** 2)))
  return law, refit_starts


@_one_blas_thread
def law_bootstrap(n, d, loss, starts, resamples: int, rng: np.random.Generator, delta: float = DELTA):
  """{exponent: [low, high]} (95 % percentile intervals) and the number of usable resamples."""
  n, d, loss = (np.asarray(x, float) for x in (n, d, loss))
  samples = {k: [] for k in ("alpha", "beta", "a", "b")}
  for _ in range(resamples):
    idx = rng.integers(0, len(n), len(n))
    results = _minimise(starts, np.log(n[idx]), np.log(d[idx]), np.log(loss[idx]), delta)
    if not results:
      continue
    law = _law(results[0][1], results[0][0])
    for k in samples:
      if k in law:
        samples[k].append(law[k])
  return _intervals(samples), len(samples["alpha"])


def _intervals(samples: dict[str, list[float]]) -> dict[str, list[float] | None]:
  return {k: ([float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) >= 2 else None)
          for k, v in samples.items()}


def parabola_minimum(n, loss) -> dict[str, Any] | None:
  """Vertex of loss ≈ p0 + p1 ln N + p2 (ln N)²; None without 3 distinct sizes or upward curvature."""
  x, y = np.log(np.asarray(n, float)), np.asarray(loss, float)
  if len(set(np.round(x, 9))) < 3:
    return None
  p2, p1, p0 = np.polyfit(x, y, 2)
  if p2 <= 0:
    return None
  x_opt = -p1 / (2 * p2)
  return dict(n_opt=float(math.exp(x_opt)), loss_opt=float(p0 + p1 * x_opt + p2 * x_opt ** 2),
              coeffs=[float(p2), float(p1), float(p0)], in_range=bool(x.min() <= x_opt <= x.max()))


def power_law(c, y) -> tuple[float, float]:
  """(exponent, coefficient) of y = coefficient · c^exponent, least squares in log-log."""
  slope, intercept = np.polyfit(np.log(np.asarray(c, float)), np.log(np.asarray(y, float)), 1)
  return float(slope), float(math.exp(intercept))


def isoflop(points: list[dict[str, float]]) -> dict[str, Any]:
  """IsoFLOP minima per budget and the fits N*(C) ∝ C^a, D*(C) ∝ C^b over the budgets whose vertex lies
  within the sizes they ran (at least 2 are needed)."""
  budgets = []
  for budget in sorted({p["budget"] for p in points}):
    group = [p for p in points if p["budget"] == budget]
    entry = dict(budget=budget, runs=len(group), n=[p["N"] for p in group], loss=[p["L"] for p in group])
    vertex = parabola_minimum(entry["n"], entry["loss"])
    if vertex:
      entry.update(vertex, d_opt=budget / (6.0 * vertex["n_opt"]))
    budgets.append(entry)
  found = [b for b in budgets if "n_opt" in b and b["in_range"]]  # an extrapolated vertex is not a measurement
  out: dict[str, Any] = dict(budgets=budgets)
  if len(found) >= 2:
    c = [b["budget"] for b in found]
    out["a"], out["n_coef"] = power_law(c, [b["n_opt"] for b in found])
    out["b"], out["d_coef"] = power_law(c, [b["d_opt"] for b in found])
  return out


def isoflop_bootstrap(points, resamples: int, rng: np.random.Generator):
  samples = {"a": [], "b": []}
  groups = {}
  for p in points:
    groups.setdefault(p["budget"], []).append(p)
  for _ in range(resamples):
    drawn = [g[i] for g in groups.values() for i in rng.integers(0, len(g), len(g))]
    fit = isoflop(drawn)
    if "a" in fit:
      samples["a"].append(fit["a"])
      samples["b"].append(fit["b"])
  return _intervals(samples), len(samples["a"])


@dataclasses.dataclass
class Point:
  name: str
  N: float
  D: float
  C: float
  L: float
  budget: float | None


def usable(rows: list[dict[str, Any]], loss: str = "final") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(points, excluded): finished runs with a finite loss, and every other run with its reason."""
  key = "final_eval_loss" if loss == "final" else "min_eval_loss"
  points, excluded = [], []
  for r in rows:
    value = r.get(key)
    if r["status"] == "done" and value is not None and math.isfinite(value) and value > 0:
      points.append(dataclasses.asdict(Point(r["name"], float(r["params"]), float(r["tokens"]), float(r["compute"]),
                                             float(value), r.get("budget"))))
    else:
      reason = r.get("error") or ("no eval loss" if r["status"] == "done" else r["status"])
      excluded.append(dict(name=r["name"], status=r["status"], reason=reason))
  return points, excluded


def fit_sweep(rows: list[dict[str, Any]], loss: str = "final", bootstrap: int = 200, seed: int = 0,
              grid: dict[str, Any] | None = None, starts: int = 128) -> dict[str, Any]:
  """Every fit the report shows, JSON-serialisable."""
  points, excluded = usable(rows, loss)
  rng = np.random.default_rng(seed)
  out: dict[str, Any] = dict(loss=loss, runs=len(rows), points=points, excluded=excluded, bootstrap=bootstrap,
                             delta=DELTA, starts=starts)
  if len(points) >= 6:
    n, d, l = ([p[k] for p in points] for k in ("N", "D", "L"))
    law, refit_starts = fit_law(n, d, l, grid=grid, starts=starts)
    law["ci"], law["bootstrap_used"] = law_bootstrap(n, d, l, refit_starts, bootstrap, rng) if bootstrap else ({}, 0)
    out["law"] = law
  else:
    out["law_error"] = f"{len(points)} usable runs; the L(N, D) fit needs at least 6"
  budgeted = [p for p in points if p["budget"] is not None]
  if budgeted:
    iso = isoflop(budgeted)
    if "a" in iso and bootstrap:
      iso["ci"], iso["bootstrap_used"] = isoflop_bootstrap(budgeted, bootstrap, rng)
    elif "a" not in iso:
      iso["error"] = ("fewer than 2 budgets have an IsoFLOP minimum within their sizes (3+ sizes, a convex "
                      "parabola, its vertex between the smallest and largest size)")
    out["isoflop"] = iso
  return out
