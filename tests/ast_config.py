"""A very small AST config on the test corpus, shared by the engine tests."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name="ast", variant="tiny"):
  spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


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
