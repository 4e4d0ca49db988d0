"""Helpers the test modules share (no test module imports from another), light enough for every test.

Here: a very small AST config on the test corpus, shared by the engine tests, and a batch for it. The
family submodules hold the PyTorch references and the tiny configs of each family: `ast`, `codec` and `dit`
(these two stub what xcodec2 and f5-tts import, as tests/reference_stubs.py explains), `llasa` (its tiny
config and code dataset), `llama` (HF Llama references), and `curves` with `curves_dit` and `curves_llasa`
(training-curve parity against the reference trainers). Shared fixtures live in tests/conftest.py.
"""

import dataclasses
import importlib.util
import os
import shutil

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name="ast", variant="tiny"):
  spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def replaced(cfg, **changes):
  """A frozen (nested) model config with fields replaced by dotted path: `replaced(cfg, **{"encoder.dim": 64})`."""
  for path, value in changes.items():
    head, _, rest = path.partition(".")
    cfg = dataclasses.replace(cfg, **{head: replaced(getattr(cfg, head), **{rest: value}) if rest else value})
  return cfg


def tiny_ast(corpus_path, **train):
  cfg = load_config()
  cfg.data.path = corpus_path
  cfg.model.update(hidden=32, layers=1, heads=4, mlp=64, max_frames=64)
  cfg.train.update(batch_size=8, log_every=1, eval_every=0, checkpoint_every=4, keep=3, best_metric="")
  cfg.train.update(**train)
  cfg.optim.warmup_steps = 2
  return cfg


OVERRIDES = ["--config.model.hidden=32", "--config.model.layers=1", "--config.model.heads=4",
             "--config.model.mlp=64", "--config.model.max_frames=64", "--config.train.batch_size=8",
             "--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.best_metric=",
             "--config.optim.warmup_steps=2"]


def fill_disk(mount, leave: int = 64 * 1024) -> None:
  """Fills the filesystem under `mount` with `mount/filler` until `leave` bytes are free."""
  with open(os.path.join(mount, "filler"), "wb") as f:
    while (spare := shutil.disk_usage(mount).free - leave) > 0:
      f.write(bytes(min(spare, 2**20)))
      f.flush()


def _batch(cfg):
  rng = np.random.default_rng(0)
  b, s = cfg.train.batch_size, 400 + 160 * (cfg.model.max_frames - 1)
  lengths = rng.integers(s // 2, s + 1, size=b).astype(np.int32)
  audio = (rng.standard_normal((b, s)) * 0.1).astype(np.float32) * (np.arange(s) < lengths[:, None])
  return {"audio": audio, "audio_lengths": lengths, "speaker_id": rng.integers(0, 16, b).astype(np.int32),
          "valid": np.ones(b, bool)}
