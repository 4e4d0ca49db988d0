"""Grain input pipelines: TFDS source → host shard → shuffle → decode → batch, resumable exactly.

    source = tfds_io.data_source(path, "train")
    budget = batching.FrameBudget(38_400, "audio", batching.Buckets(multiple=256 * 128), hop=256)
    ds = pipeline.make_pipeline(source, seed=0, map_fn=pipeline.DecodeSpeech(24_000), batching=budget)
    it = pipeline.make_iterator(ds)          # or make_iterator(ds, saved_state)
    batch = next(it); state = it.get_state()  # JSON-serialisable; Orbax: grain.checkpoint.CheckpointSave(it)

Records are read by index: the source is shuffled with a per-epoch seed and repeated into one global
stream, the same on every host; host `h` of `H` takes positions `h, h + H, h + 2H, ...`. So the
examples of a global batch (each host's rows, concatenated) do not depend on how many hosts share
it. Records are decoded by `map_fn(record, rng)` where `rng = default_rng((seed, epoch,
record_index))`: crops depend on the record and the epoch only, not on the host or worker count. A record that fails to parse, or whose `map_fn` raises, is skipped and
counted (`read_errors`, `decode_errors`); `map_fn` returning None filters a record (`filtered`).
`pipeline_stats(iterator)` sums these and the batching stage's counts.

Decoding runs in `read_options.num_threads` threads of each of `worker_count` processes (0 = this
process). Batching always runs in the main process, after the workers' outputs are interleaved back
into record order, so batches do not depend on `worker_count`; an iterator state, though, only
restores into a pipeline with the same `worker_count`. Worker processes are spawned: a script that
uses workers needs an `if __name__ == "__main__":` guard, and Grain reads absl flags, so
`make_pipeline` marks them parsed (at their defaults) unless `app.run` already parsed them.

Each global epoch covers every record exactly once across the hosts, but hosts' batch counts can
differ by one at the end of a finite stream; train by steps with `num_epochs=None`. Bucketed batch shapes also differ between hosts from step to
step, so for several hosts use `Packing` or a single bucket length with `global_batch`.
"""

from collections.abc import Callable, Mapping
import dataclasses
import json
from typing import Any

from absl import flags
from absl import logging
import grain
import jax
import numpy as np

from jaxspeech.audio import io as audio_io
from jaxspeech.data import batching as batching_lib
from jaxspeech.data import tfds_io

READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=32)


@dataclasses.dataclass(frozen=True)
class Skipped:
  """Stands in for a record that could not be read or decoded."""
  index: int
  kind: str  # "read_errors", "decode_errors" or "filtered"
  reason: str = ""


class _IndexedSource:
  """Yields (record index, record), or (index, Skipped) when the record fails to parse."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    try:
      return index, self._source[index]
    except Exception as e:  # pylint: disable=broad-except
      return index, Skipped(index, "read_errors", f"{type(e).__name__}: {e}")


@dataclasses.dataclass(frozen=True)
class _Decode:
  map_fn: Callable[[Mapping[str, Any], np.random.Generator], Any]
  seed: int
  epoch_len: int
  shard_index: int
  shard_count: int

  def __call__(self, position, item):
    index, record = item
    if isinstance(record, Skipped):
      return record
    epoch = (position * self.shard_count + self.shard_index) // self.epoch_len  # position in the global stream
    rng = np.random.default_rng((self.seed, epoch, index))
    try:
      example = self.map_fn(record, rng)
    except Exception as e:  # pylint: disable=broad-except
      return Skipped(index, "decode_errors", f"{type(e).__name__}: {e}")
    return Skipped(index, "filtered") if example is None else example


def _count(element):
  if isinstance(element, Skipped):
    if element.kind != "filtered":
      logging.log_every_n_seconds(logging.WARNING, "skipped record %d (%s): %s", 10, element.index, element.kind,
                                  element.reason)
    return None, {element.kind: 1}
  return element, {"examples": 1}


@dataclasses.dataclass(frozen=True)
class DecodeSpeech:
  """A `map_fn` for `schema.SPEECH_FEATURES` records → {"audio": float32 [S], "speaker_id": int32}.

  Resamples to `sample_rate`, randomly crops to at most `crop_samples` (cut at the record's own
  rate first, so long records are not resampled whole), then returns `features(example, record)`
  when `features` is given (e.g. to add a log-mel or text tokens). Empty audio raises, so the record
  is skipped and counted as a decode error.
  """
  NEEDS = ("audio", "sample_rate", "speaker_id")  # the record features it reads
  sample_rate: int
  crop_samples: int | None = None
  features: Callable[[dict, Mapping[str, Any]], dict] | None = None

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict:
    wav_S = audio_io.to_float(record["audio"])
    if wav_S.size == 0:
      raise ValueError("empty audio")
    rate = int(record["sample_rate"])
    if self.crop_samples is not None:
      size = -(-self.crop_samples * rate // self.sample_rate)
      start = int(rng.integers(0, max(len(wav_S) - size, 0) + 1))
      wav_S = wav_S[start:start + size]
    wav_S = audio_io.resample(wav_S, rate, self.sample_rate)[:self.crop_samples]
    example = {"audio": wav_S, "speaker_id": np.int32(record["speaker_id"])}
    return example if self.features is None else self.features(example, record)


def require_speech(path: str, user: str, extra: tuple[str, ...] = ()) -> None:
  """Refuses in one line a dataset at `path` without the features `DecodeSpeech` (and `extra`) reads."""
  tfds_io.require_features(path, DecodeSpeech.NEEDS + extra, user,
                           hint="it trains on a speech dataset, as `jaxspeech data synth` or `data build` writes")


def make_pipeline(source, *, seed: int, map_fn: Callable[[Mapping[str, Any], np.random.Generator], Any],
                  batching, shard_index: int | None = None, shard_count: int | None = None,
                  shuffle: bool = True, num_epochs: int | None = None, worker_count: int = 0,
                  worker_buffer_size: int = 2, read_options: grain.ReadOptions = READ_OPTIONS,
                  prefetch: int = 2) -> grain.IterDataset:
  """The input pipeline over a random-access `source` (e.g. `tfds_io.data_source`).

  `batching` is a `batching.FixedBatch`, `batching.FrameBudget` or `packing.Packing` (anything with
  `apply(ds, seed) -> IterDataset`). The host's slice of the global stream defaults to `jax.process_index()` of
  `jax.process_count()`. `num_epochs=None` repeats forever. `prefetch` batches are prepared ahead in a
  background thread (0 = none).
  """
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  ds = grain.MapDataset.source(_IndexedSource(source))
  epoch_len = len(ds)
  if epoch_len < shard_count:
    raise ValueError(f"a source with {len(source)} records cannot feed {shard_count} hosts")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)[shard_index::shard_count]
  ds = ds.map_with_index(_Decode(map_fn, seed, epoch_len, shard_index, shard_count))
  ds = ds.to_iter_dataset(read_options)
  if worker_count:
    if not flags.FLAGS.is_parsed():  # Grain reads its absl flags when it starts workers
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=worker_buffer_size))
  ds = batching_lib.Tally(ds, _count, ["examples", "read_errors", "decode_errors", "filtered"],
                          max_drops_in_a_row=epoch_len)
  ds = batching.apply(ds, seed)
  if prefetch:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
  return ds


def for_family(cfg, split: str, *, train: bool, shard_index: int, shard_count: int, map_fn, batching
               ) -> grain.IterDataset:
  """A family's pipeline over `split` of `cfg.data.path`: shuffled and repeated to train, one pass to evaluate."""
  return make_pipeline(tfds_io.data_source(cfg.data.path, split), seed=cfg.seed, map_fn=map_fn, batching=batching,
                       shard_index=shard_index, shard_count=shard_count, shuffle=train,
                       num_epochs=None if train else 1, worker_count=cfg.data.worker_count)


def host_batch_size(cfg, shard_count: int) -> int:
  """This host's rows of `train.batch_size`, which must split evenly over the `shard_count` hosts."""
  if cfg.train.batch_size % shard_count:
    raise ValueError(f"train.batch_size={cfg.train.batch_size} does not split over {shard_count} hosts")
  return cfg.train.batch_size // shard_count


def make_iterator(ds: grain.IterDataset, state: Mapping | str | None = None) -> grain.DatasetIterator:
  """An iterator over `ds`, restored from `state` (a `get_state()` dict or its JSON) when given."""
  iterator = iter(ds)
  if state is not None:
    iterator.set_state(json.loads(state) if isinstance(state, str) else state)
  return iterator


def pipeline_stats(iterator: grain.DatasetIterator) -> dict[str, float]:
  """Counts so far (as of the last batch taken): examples, skips, drops, `efficiency` = filled / slots."""
  stats = {}
  pending = [iterator.get_state()]
  while pending:
    node = pending.pop()
    if isinstance(node, Mapping):
      for key, n in node.get("counts", {}).items():
        stats[key] = stats.get(key, 0) + n
      pending.extend(v for k, v in node.items() if k != "counts")
    elif isinstance(node, (list, tuple)):
      pending.extend(node)
  if stats.get("slots"):
    stats["efficiency"] = stats["filled"] / stats["slots"]
  return stats


def global_batch(batch: Mapping[str, np.ndarray],
                 shardings: Mapping[str, jax.sharding.Sharding]) -> dict[str, jax.Array]:
  """Assembles every host's batch into global arrays (hosts' rows concatenated), each field by its sharding in
  `shardings`; fields without one are left out."""
  return {key: jax.make_array_from_process_local_data(shardings[key], np.asarray(x))
          for key, x in batch.items() if key in shardings}
