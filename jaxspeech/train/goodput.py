"""Where a run's wall time goes: goodput = productive training time / wall time (as in MaxText's
goodput monitoring). Badput is timed on the host around each non-productive activity."""

import contextlib
import time

BADPUT = ("compile", "data", "checkpoint", "eval", "profile")


class Clock:
  def __init__(self):
    self.start = time.perf_counter()
    self.seconds = dict.fromkeys(BADPUT, 0.0)

  @contextlib.contextmanager
  def lost_to(self, what: str):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[what] += time.perf_counter() - t0

  def report(self) -> dict[str, float]:
    """Cumulative seconds lost to each activity, the wall time so far and `goodput` in [0, 1]."""
    wall = time.perf_counter() - self.start
    lost = sum(self.seconds.values())
    return {**{f"time/{k}_s": v for k, v in self.seconds.items()}, "time/wall_s": wall,
            "goodput": max(wall - lost, 0.0) / wall if wall > 0 else 0.0}
