"""`train.profile_steps="a,b"`: a `jax.profiler` trace of steps a..b into WORKDIR/profile (TensorBoard's
profile plugin or Perfetto reads it). Every host traces its own devices."""

import os

import jax


def parse_steps(spec: str) -> tuple[int, int] | None:
  if not spec:
    return None
  try:
    first, last = (int(s) for s in spec.split(","))
  except ValueError:
    raise ValueError(f"train.profile_steps must be 'first,last' (e.g. '10,15'), got {spec!r}") from None
  if not 0 < first <= last:
    raise ValueError(f"train.profile_steps needs 0 < first <= last, got {spec!r}")
  return first, last


class Profiler:
  def __init__(self, spec: str, workdir: str):
    self.steps = parse_steps(spec)
    self.log_dir = os.path.join(workdir, "profile")
    self.active = False

  def before(self, step: int) -> None:
    """Call before dispatching step `step` (1-based)."""
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.log_dir)
      self.active = True

  def after(self, step: int, result) -> None:
    """Call after dispatching step `step`; ends the trace once that step has run."""
    if self.active and step >= self.steps[1]:
      jax.block_until_ready(result)
      jax.profiler.stop_trace()
      self.active = False

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
