"""Metrics sinks (TensorBoard, metrics.jsonl, a progress bar) and MFU."""

import json
import math
import sys

import jax
import tqdm

from jaxspeech import storage

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


def progress_bar(total: int, initial: int = 0, unit: str = "step", disable: bool = False) -> tqdm.tqdm:
  """The progress bar training shows on stderr: done of `total` `unit`s, the rate and the time left."""
  return tqdm.tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, mininterval=1.0, file=sys.stderr,
                   disable=disable)


def _kept(path: str, step: int) -> list[str]:
  """The lines of metrics.jsonl up to `step`: what an earlier run wrote past it, and a torn last line, dropped."""
  if not storage.exists(path):
    return []
  kept = []
  for line in storage.read_text(path).splitlines(keepends=True):
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError):
      continue
  return kept


class _Lines:
  """metrics.jsonl opened for appending: a local file, or on a bucket (whose objects cannot be appended to) the
  whole object rewritten at each flush."""

  def __init__(self, path: str, lines: list[str]):
    self.path, self.remote = path, storage.is_remote(path)
    self.lines = list(lines)
    self.file = None if self.remote else open(path, "a")

  def write(self, line: str) -> None:
    if self.remote:
      self.lines.append(line)
    else:
      self.file.write(line)

  def flush(self) -> None:
    if self.remote:
      storage.write_text(self.path, "".join(self.lines))
    else:
      self.file.flush()

  def close(self) -> None:
    if self.file is not None:
      self.file.close()


class Writer:
  """Writes scalars to TensorBoard and metrics.jsonl (process 0 only) and drives a progress bar.

  A run resumed at `initial_step` first drops what an earlier run wrote after that step (the steps it
  trained past its last checkpoint), so each step appears once in both.
  """

  def __init__(self, workdir: str, total_steps: int, initial_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    path = storage.join(workdir, "metrics.jsonl")
    kept = _kept(path, initial_step)
    storage.write_text(path, "".join(kept))
    import tensorboardX  # imports torch (2.7 s): only a run that writes events pays it, not every command
    self.tb = tensorboardX.SummaryWriter(storage.join(workdir, "tb"), purge_step=initial_step + 1)
    self.jsonl = _Lines(path, kept)
    self.bar = progress_bar(total_steps, initial_step)

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
