"""What one global train batch holds, read from its data: D of a scaling law for the families whose batches
carry padding that varies with the data (Llasa's packed rows, DiT's frame budget)."""

import copy
import json

from jaxspeech.data import pipeline

BATCHES = 16
_MEANS: dict[str, float] = {}


def mean_units(cfg, make_data, units, unit: str, batches: int = BATCHES) -> float:
  """The mean of `units(batch)[unit]` over the first `batches` global train batches, read as one host (the
  count of the run's own first batches: same seed, shuffle and packing). Cached per data config."""
  sections = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "optim", "train", "mesh")}
  key = json.dumps([unit, batches, cfg.train.batch_size, sections], sort_keys=True, default=str)
  if key not in _MEANS:
    cfg = copy.deepcopy(cfg)
    cfg.data.worker_count = 0
    iterator = pipeline.make_iterator(make_data(cfg, cfg.data.train_split, train=True, shard_index=0, shard_count=1))
    total = sum(units(next(iterator))[unit] for _ in range(batches))
    iterator.close()
    _MEANS[key] = total / batches
  return _MEANS[key]
