"""Metrics sinks (TensorBoard, metrics.jsonl, a progress bar) and MFU."""

import json
import math
import os
import sys

import jax
import tensorboardX
import tqdm

# Dense bf16 peak FLOP/s per chip, from the vendors' spec sheets, by `device_kind` prefix.
PEAK_BF16_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,   # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,        # v5p reports "TPU v5"
    "TPU v6 lite": 918e12,   # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,   # SXM
    "NVIDIA H200": 989e12,
}


def peak_flops(device: jax.Device) -> float | None:
  """Peak bf16 FLOP/s of one device; None for CPUs and unknown kinds."""
  kind = device.device_kind
  matches = [k for k in PEAK_BF16_FLOPS if kind.startswith(k)]
  return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def utilisation(flops_per_step: float, step_time: float, devices: list[jax.Device]) -> dict[str, float]:
  """`mfu` when the device peak is known; always the achieved FLOP/s (`flops_per_s`, all devices)."""
  achieved = flops_per_step / step_time
  out = {"flops_per_s": achieved}
  peak = peak_flops(devices[0])
  if peak:
    out["mfu"] = achieved / (peak * len(devices))
  return out


def _truncate_after(path: str, step: int) -> None:
  """Drops the lines of metrics.jsonl whose step is past `step` (and a torn last line)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (ValueError, KeyError):
        continue
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


class Writer:
  """Writes scalars to TensorBoard and metrics.jsonl (process 0 only) and drives a progress bar.

  A run resumed at `initial_step` first drops what an earlier run wrote after that step (the steps it
  trained past its last checkpoint), so each step appears once in both.
  """

  def __init__(self, workdir: str, total_steps: int, initial_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    path = os.path.join(workdir, "metrics.jsonl")
    _truncate_after(path, initial_step)
    self.tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"), purge_step=initial_step + 1)
    self.jsonl = open(path, "a")
    self.bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                         mininterval=1.0, file=sys.stderr)

  def advance(self, step: int) -> None:
    if self.enabled:
      self.bar.update(step - self.bar.n)

  def write(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    metrics = {f"{prefix}{k}": float(v) for k, v in metrics.items()}
    for key, value in metrics.items():
      if math.isfinite(value):
        self.tb.add_scalar(key, value, step)
    self.jsonl.write(json.dumps({"step": step, **{k: v if math.isfinite(v) else str(v)
                                                  for k, v in metrics.items()}}) + "\n")
    self.jsonl.flush()
    shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "eval/loss", "eval/accuracy")}
    if shown:
      self.bar.set_postfix(shown, refresh=False)
    if prefix:
      self.bar.write(f"step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

  def close(self) -> None:
    if self.enabled:
      self.bar.close()
      self.tb.close()
      self.jsonl.close()
