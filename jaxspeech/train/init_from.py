"""`train.init_from`: start a run from another workdir's params (a converted checkpoint, a pretraining
run) with this config's optimizer, groups and EMA, as MaxText's `load_parameters_path` does."""

import re
import sys

import jax
import ml_collections
import numpy as np

from jaxspeech.train import optim
from jaxspeech.train.family import Family
from jaxspeech.train.state import TrainState
from jaxspeech.workdir import Workdir


def _key(path) -> str:
  return ".".join(optim.param_path(path))


def apply(state: TrainState, family: Family, cfg: ml_collections.ConfigDict) -> TrainState:
  """`state` (a fresh init) with its params, and EMA, replaced by those of `cfg.train.init_from`."""
  src = cfg.train.init_from
  source = Workdir(src)
  source_config = source.config
  loaded = source.read_params(weights="auto").params
  if family.adapt_init is not None:
    loaded = family.adapt_init(loaded, source_config, cfg)
  skip = re.compile(cfg.train.init_skip) if cfg.train.init_skip else None
  if skip:
    loaded = {k: v for k, v in loaded.items() if not skip.search(k)}
  leaves = dict((_key(p), x) for p, x in jax.tree_util.tree_leaves_with_path(state.params))
  problems = [f"unexpected param {k} (not in this model)" for k in sorted(loaded.keys() - leaves.keys())]
  problems += [f"shape mismatch {k}: {tuple(v.shape)} in {src}, {leaves[k].shape} here"
               for k, v in sorted(loaded.items()) if k in leaves and tuple(v.shape) != leaves[k].shape]
  if problems:
    raise ValueError(f"train.init_from={src} does not fit this model (use train.init_skip to leave params out):\n  "
                     + "\n  ".join(problems))
  fresh = sorted(leaves.keys() - loaded.keys())
  if fresh and jax.process_index() == 0:
    print(f"init_from {src}: {len(loaded)} params loaded; {len(fresh)} keep their initialisation: "
          + ", ".join(fresh[:8]) + (" ..." if len(fresh) > 8 else ""), file=sys.stderr)

  def put(path, leaf):
    k = _key(path)
    return leaf if k not in loaded else jax.device_put(np.asarray(loaded[k], leaf.dtype), leaf.sharding)

  params = jax.tree_util.tree_map_with_path(put, state.params)
  ema = None if state.ema is None else jax.tree.map(lambda x: x.copy(), params)
  return state.replace(params=params, ema=ema)
