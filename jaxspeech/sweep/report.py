"""`jaxspeech sweep fit` outputs in the sweep dir: report.md, fit.json and three PNG plots."""

import json
import math
import os
import time
from typing import Any

import numpy as np

from jaxspeech.sweep import fit

PLOTS = ("loss_vs_compute.png", "isoflop.png", "predicted_vs_observed.png")


def _g(x, digits: int = 4) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-"
  return f"{x:.{digits}g}"


def _ci(ci: dict | None, key: str) -> str:
  interval = (ci or {}).get(key)
  return f"[{_g(interval[0], 3)}, {_g(interval[1], 3)}]" if interval else "-"


def summary(result: dict[str, Any]) -> str:
  lines = [f"{len(result['points'])} of {result['runs']} runs used ({result['loss']} eval loss)"]
  law = result.get("law")
  if law:
    ci = law.get("ci")
    lines.append(f"L(N, D) = {_g(law['E'])} + {_g(law['A'])}/N^{_g(law['alpha'], 3)} + {_g(law['B'])}/D^"
                 f"{_g(law['beta'], 3)}; alpha {_ci(ci, 'alpha')}, beta {_ci(ci, 'beta')}")
    if "a" in law:
      lines.append(f"  compute-optimal from the law: N_opt ~ C^{_g(law['a'], 3)} {_ci(ci, 'a')}, "
                   f"D_opt ~ C^{_g(law['b'], 3)} {_ci(ci, 'b')}")
  else:
    lines.append(f"L(N, D): {result.get('law_error')}")
  iso = result.get("isoflop")
  if iso and "a" in iso:
    lines.append(f"IsoFLOP minima: N* ~ C^{_g(iso['a'], 3)} {_ci(iso.get('ci'), 'a')}, "
                 f"D* ~ C^{_g(iso['b'], 3)} {_ci(iso.get('ci'), 'b')}")
  elif iso:
    lines.append(f"IsoFLOP minima: {iso.get('error')}")
  return "\n".join(lines)


def _frontier(law: dict[str, float], c: np.ndarray) -> np.ndarray:
  """L(N_opt(C), D_opt(C)) under C = 6 N D."""
  n_opt = law["G"] * (c / 6.0) ** law["a"]
  return fit.predict(law, n_opt, c / 6.0 / n_opt)


def _plots(sweep_dir: str, result: dict[str, Any]) -> list[str]:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  points, law, iso = result["points"], result.get("law"), result.get("isoflop")
  paths = []
  if not points:
    return paths
  c = np.array([p["C"] for p in points])
  n = np.array([p["N"] for p in points])
  loss = np.array([p["L"] for p in points])

  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  sc = ax.scatter(c, loss, c=np.log10(n), cmap="viridis", s=28, zorder=3)
  fig.colorbar(sc, ax=ax, label="log10 N (parameters)")
  if law and "G" in law:
    grid = np.logspace(np.log10(c.min()) - 0.3, np.log10(c.max()) + 0.3, 100)
    ax.plot(grid, _frontier(law, grid), "k--", lw=1.2, label="fitted frontier L(N_opt(C), D_opt(C))")
  if iso:
    minima = [b for b in iso["budgets"] if "n_opt" in b]
    if minima:
      ax.scatter([b["budget"] for b in minima], [b["loss_opt"] for b in minima], marker="*", s=160, c="tab:red",
                 zorder=4, label="IsoFLOP minima")
  ax.set(xscale="log", xlabel="compute C = 6ND (FLOPs)", ylabel=f"{result['loss']} eval loss",
         title="Loss against compute")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  fig.tight_layout()
  paths.append(_save(fig, sweep_dir, PLOTS[0]))

  if iso and iso["budgets"]:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    colors = plt.cm.plasma(np.linspace(0.1, 0.85, len(iso["budgets"])))
    for color, b in zip(colors, iso["budgets"]):
      left.scatter(b["n"], b["loss"], color=color, s=24, label=f"C = {b['budget']:.2g}")
      if "coeffs" in b:
        x = np.linspace(np.log(min(b["n"])) - 0.2, np.log(max(b["n"])) + 0.2, 100)
        left.plot(np.exp(x), np.polyval(b["coeffs"], x), color=color, lw=1)
        left.scatter([b["n_opt"]], [b["loss_opt"]], color=color, marker="*", s=150, edgecolor="k", zorder=4)
    left.set(xscale="log", xlabel="parameters N", ylabel=f"{result['loss']} eval loss", title="IsoFLOP curves")
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.legend(fontsize=8)
    minima = [b for b in iso["budgets"] if "n_opt" in b]
    if minima:
      cb = np.array([b["budget"] for b in minima])
      for key, color in (("n_opt", "tab:blue"), ("d_opt", "tab:orange")):
        inside = [b["in_range"] for b in minima]
        right.scatter(cb[inside], [b[key] for b in minima if b["in_range"]], color=color,
                      label=f"{key[0].upper()}*(C)")
        if not all(inside):
          right.scatter(cb[[not i for i in inside]], [b[key] for b in minima if not b["in_range"]],
                        facecolors="none", edgecolors=color, label=f"{key[0].upper()}*(C), extrapolated, not fitted")
      if "a" in iso:
        grid = np.logspace(np.log10(cb.min()) - 0.2, np.log10(cb.max()) + 0.2, 50)
        right.plot(grid, iso["n_coef"] * grid ** iso["a"], color="tab:blue", lw=1, label=f"C^{iso['a']:.2f}")
        right.plot(grid, iso["d_coef"] * grid ** iso["b"], color="tab:orange", lw=1, label=f"C^{iso['b']:.2f}")
      right.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", title="Compute-optimal N and D")
      right.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, sweep_dir, PLOTS[1]))

  if law:
    pred = fit.predict(law, n, np.array([p["D"] for p in points]))
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.scatter(pred, loss, s=24, zorder=3)
    lo, hi = min(pred.min(), loss.min()), max(pred.max(), loss.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="predicted L(N, D)", ylabel="observed loss", title="Predicted against observed")
    fig.tight_layout()
    paths.append(_save(fig, sweep_dir, PLOTS[2]))
  return paths


def _save(fig, sweep_dir: str, name: str) -> str:
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  path = os.path.join(sweep_dir, name)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _markdown(name: str, rows: list[dict[str, Any]], result: dict[str, Any], plots: list[str]) -> str:
  statuses = {}
  for r in rows:
    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
  out = [f"# Scaling-law sweep {name}".rstrip(), "",
         f"Fitted {time.strftime('%Y-%m-%d %H:%M')}. {len(rows)} runs ("
         + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items())) + f"); the fits use the {result['loss']} "
         f"eval loss of the {len(result['points'])} finished runs. C = 6ND; N counts every parameter.", ""]
  law = result.get("law")
  out += ["## Parametric law L(N, D) = E + A / N^α + B / D^β", ""]
  if law:
    ci = law.get("ci")
    out += ["| parameter | value | 95% CI |", "| --- | --- | --- |",
            f"| E | {_g(law['E'])} | |", f"| A | {_g(law['A'])} | |", f"| B | {_g(law['B'])} | |",
            f"| α | {_g(law['alpha'])} | {_ci(ci, 'alpha')} |", f"| β | {_g(law['beta'])} | {_ci(ci, 'beta')} |"]
    if "a" in law:
      out += [f"| a = β/(α+β), N_opt ∝ C^a | {_g(law['a'])} | {_ci(ci, 'a')} |",
              f"| b = α/(α+β), D_opt ∝ C^b | {_g(law['b'])} | {_ci(ci, 'b')} |"]
    out += ["", f"Huber objective (δ = {result['delta']:g}, summed, divided by δ): {_g(law['objective'])}; RMSE of "
            f"log L: {_g(law['rmse_log'])}; bootstrap: {law.get('bootstrap_used', 0)} of {result['bootstrap']} "
            "resamples.", ""]
  else:
    out += [f"Not fitted: {result.get('law_error')}.", ""]
  iso = result.get("isoflop")
  if iso:
    out += ["## IsoFLOP minima (Chinchilla approach 2)", "",
            "| budget C | runs | N* | D* = C/(6N*) | loss at N* | N* within the sizes run |",
            "| --- | --- | --- | --- | --- | --- |"]
    for b in iso["budgets"]:
      if "n_opt" in b:
        out.append(f"| {b['budget']:.3g} | {b['runs']} | {b['n_opt']:.4g} | {b['d_opt']:.4g} | {b['loss_opt']:.4g} | "
                   f"{'yes' if b['in_range'] else 'no (extrapolated; left out of the exponents)'} |")
      else:
        out.append(f"| {b['budget']:.3g} | {b['runs']} | - | - | - | no minimum (needs 3 sizes, convex) |")
    out.append("")
    if "a" in iso:
      ci = iso.get("ci")
      out += [f"N*(C) ∝ C^a with a = {_g(iso['a'])} {_ci(ci, 'a')}; D*(C) ∝ C^b with b = {_g(iso['b'])} "
              f"{_ci(ci, 'b')} (95% CI; bootstrap: {iso.get('bootstrap_used', 0)} of {result['bootstrap']} "
              "resamples).", ""]
    else:
      out += [f"No exponent: {iso.get('error')}.", ""]
  titles = {PLOTS[0]: "Loss against compute", PLOTS[1]: "IsoFLOP curves", PLOTS[2]: "Predicted against observed"}
  for path in plots:
    base = os.path.basename(path)
    out += [f"![{titles[base]}]({base})", ""]
  out += ["## Runs", "",
          "| run | status | N | D | C = 6ND | FLOPs (family) | steps | final eval loss | min eval loss | wall s | "
          "attempts |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    out.append(f"| {r['name']} | {r['status']} | {r['params']:,} | {r['tokens']:.3g} | {r['compute']:.3g} | "
               f"{r['flops']:.3g} | {r['steps']} | {_g(r['final_eval_loss'])} | {_g(r['min_eval_loss'])} | "
               f"{_g(r['wall_time'], 3)} | {r['attempts']} |")
  if result["excluded"]:
    out += ["", "## Left out of the fits", ""]
    out += [f"- {e['name']} ({e['status']}): {e['reason']}" for e in result["excluded"]]
  return "\n".join(out) + "\n"


def write(sweep_dir: str, name: str, rows: list[dict[str, Any]], result: dict[str, Any]) -> list[str]:
  """Writes fit.json, the plots and report.md; returns their paths."""
  plots = _plots(sweep_dir, result)
  fit_path = os.path.join(sweep_dir, "fit.json")
  with open(fit_path, "w") as f:
    json.dump({"name": name, "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}, f, indent=1)
  report_path = os.path.join(sweep_dir, "report.md")
  with open(report_path, "w") as f:
    f.write(_markdown(name, rows, result, plots))
  return [report_path, fit_path, *plots]
