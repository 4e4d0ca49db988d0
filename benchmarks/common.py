"""What every benchmark script shares: the machine and versions lines, and writing its RESULTS.md section."""

from importlib import metadata
import os
import platform
import re
import subprocess

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
HEADER = """# Benchmark results

Speed figures measured by the scripts in `benchmarks/`. Each section is written by the script named in it
(`--write` replaces that section and leaves the others alone) and states the machine or accelerator card, the
library versions and the date (UTC) of its figures. Figures from different machines are not comparable;
rerun a script on your machine before comparing against it.
"""


def machine() -> str:
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.M).group(1).strip()
  except (OSError, subprocess.CalledProcessError, AttributeError):
    model = platform.processor() or platform.machine()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{model}, {cores} cores, no accelerator (JAX CPU backend)"


def versions(names: tuple[str, ...]) -> str:
  return ", ".join(f"{n} {metadata.version(n)}" for n in names) + f", Python {platform.python_version()}"


def write_section(section: str, text: str, path: str = RESULTS) -> None:
  """Replaces the `## {section}` of RESULTS.md, or appends it; re-read just before writing, since other
  scripts own the other sections."""
  body = open(path).read() if os.path.exists(path) else HEADER
  pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.M | re.S)
  if pattern.search(body):
    body = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", body, count=1)
  else:
    body = body.rstrip("\n") + "\n\n" + text
  with open(path + ".tmp", "w") as f:
    f.write(body.rstrip("\n") + "\n")
  os.replace(path + ".tmp", path)


class EngineStep:
  """The trainer's own compiled train step for `family` (a registry family, or one with a benchmark's loss) on a
  1-device mesh, with its initial state and `batch` (host arrays) placed as the trainer places them."""

  def __init__(self, family, cfg, batch: dict):
    import time
    import jax
    from jaxspeech import sharding
    from jaxspeech.train import state as state_lib, trainer

    cfg.train.compilation_cache = ""   # compile times are figures here
    self.run = trainer.Trainer(cfg, "", jax.devices()[:1], family=family)
    with sharding.use_rules(self.run.mesh, self.run.rules):
      self.state, _ = state_lib.create(family, cfg, self.run.tx, self.run.mesh)
      self.batch = {k: jax.device_put(v, self.run.batch_shardings[k]) for k, v in batch.items()}
      t0 = time.perf_counter()
      self.step = self.run.train_step.lower(self.state, self.batch).compile()
      self.compile_s = time.perf_counter() - t0

  def train_step(self) -> float:
    """Seconds for one step, state donated and replaced."""
    import time
    import jax
    t0 = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics["loss"])
    return time.perf_counter() - t0
