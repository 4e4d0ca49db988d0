"""Batching stages: fixed-size padded batches and frame-budget bucketed batches.

Both pad a length field `key` (and the fields in `pad_extra`) to a bucket length and emit, for every
padded field `k`: `k` zero-padded along its first axis, `k_lengths` (int32 [B]) and `k_mask`
(bool [B, T]). Other fields are stacked. `valid` (bool [B]) marks the rows that hold an example: rows
are padded too, so a batch's shape depends only on its bucket lengths and jit compiles once per bucket.

Each stage is a Grain `IterDataset` whose iterator state is plain JSON, so a restored iterator
continues exactly where it stopped. `Tally` keeps running counts (dropped examples, filled and total
slots) in that state; `pipeline.pipeline_stats` reads them back.
"""

from collections.abc import Callable, Mapping, Sequence
import bisect
import dataclasses
import functools
import itertools
from typing import Any

from absl import logging
import grain
import numpy as np


@dataclasses.dataclass(frozen=True)
class Buckets:
  """Padded lengths: the smallest of `lengths` that fits, or (no `lengths`) the next multiple of `multiple`."""
  lengths: tuple[int, ...] = ()
  multiple: int = 1

  def __post_init__(self):
    if list(self.lengths) != sorted(set(self.lengths)) or self.multiple < 1:
      raise ValueError(f"bucket lengths must be strictly increasing and multiple >= 1, got {self}")

  def __call__(self, n: int) -> int | None:
    """The padded length for length `n`; None when `n` is longer than the longest bucket."""
    if not self.lengths:
      return -(-n // self.multiple) * self.multiple
    i = bisect.bisect_left(self.lengths, n)
    return self.lengths[i] if i < len(self.lengths) else None


def pad_batch(examples: Sequence[Mapping[str, Any]], pad: Mapping[str, Buckets], rows: int) -> dict[str, np.ndarray]:
  """Stacks `examples` into `rows` rows, padding the fields in `pad` to their bucket length."""
  batch = {}
  for key in examples[0]:
    values = [np.asarray(example[key]) for example in examples]
    if key in pad:
      lengths_B = np.zeros(rows, np.int32)
      lengths_B[:len(values)] = [len(v) for v in values]
      size = pad[key](int(lengths_B.max()))
      x_BxT = np.zeros((rows, size) + values[0].shape[1:], values[0].dtype)
      for i, v in enumerate(values):
        x_BxT[i, :len(v)] = v
      batch[key] = x_BxT
      batch[f"{key}_lengths"] = lengths_B
      batch[f"{key}_mask"] = np.arange(size) < lengths_B[:, None]
    else:
      x_B = np.zeros((rows,) + values[0].shape, values[0].dtype)
      x_B[:len(values)] = values
      batch[key] = x_B
  batch["valid"] = np.arange(rows) < len(examples)
  return batch


# An endless training stream in which this many examples in a row are too long would otherwise spin forever.
MAX_DROPS_IN_A_ROW = 10_000


class Tally(grain.IterDataset):
  """Maps elements with `fn(element) -> (element or None, counts)`, dropping Nones.

  Running sums of the counts are part of the iterator state (key "counts"), so they survive a restore.
  `max_drops_in_a_row` guards against a map that drops everything (an infinite pipeline would spin).
  """

  def __init__(self, parent: grain.IterDataset, fn: Callable[[Any], tuple[Any, Mapping[str, int]]],
               keys: Sequence[str], max_drops_in_a_row: int | None = None):
    super().__init__(parent)
    self._fn, self._keys, self._max_drops = fn, tuple(keys), max_drops_in_a_row

  def __iter__(self):
    return _TallyIterator(self._parent.__iter__(), self._fn, self._keys, self._max_drops)


class _TallyIterator(grain.DatasetIterator):

  def __init__(self, parent, fn, keys, max_drops):
    super().__init__(parent)
    self._fn, self._max_drops = fn, max_drops
    self._counts = dict.fromkeys(keys, 0)

  def __next__(self):
    drops = 0
    while True:
      element, counts = self._fn(next(self._parent))
      for key, n in counts.items():
        self._counts[key] += int(n)
      if element is not None:
        return element
      drops += 1
      if self._max_drops is not None and drops >= self._max_drops:
        raise RuntimeError(f"{drops} elements in a row were dropped; counts so far: {self._counts}")

  def get_state(self):
    return {"parent": self._parent.get_state(), "counts": dict(self._counts)}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._counts = dict(state["counts"])


def _drop_too_long(example, buckets: Mapping[str, Buckets]):
  if any(b(len(example[k])) is None for k, b in buckets.items()):
    logging.log_every_n_seconds(logging.WARNING, "dropped an example longer than its largest bucket", 60)
    return None, {"too_long": 1}
  return example, {}


def _fill(batch, key):
  rows, size = batch[key].shape[:2]
  return batch, {"batches": 1, "filled": int(batch[f"{key}_lengths"].sum()), "slots": rows * size}


@dataclasses.dataclass(frozen=True)
class FixedBatch:
  """`batch_size` examples per batch, `key` (and `pad_extra`) padded to a bucket length.

  Examples longer than the longest bucket are dropped and counted (`too_long`). With
  `drop_remainder=False` the last batch of a finite pipeline is padded with empty rows.
  """
  batch_size: int
  key: str
  buckets: Buckets
  pad_extra: Mapping[str, Buckets] = dataclasses.field(default_factory=dict)
  drop_remainder: bool = True

  def apply(self, ds: grain.IterDataset, seed: int) -> grain.IterDataset:
    del seed  # the batch order is the input order
    pad = {self.key: self.buckets, **self.pad_extra}
    ds = Tally(ds, functools.partial(_drop_too_long, buckets=pad), ["too_long"], MAX_DROPS_IN_A_ROW)
    ds = ds.batch(self.batch_size, drop_remainder=self.drop_remainder,
                  batch_fn=functools.partial(pad_batch, pad=pad, rows=self.batch_size))
    return Tally(ds, functools.partial(_fill, key=self.key), ["batches", "filled", "slots"])


@dataclasses.dataclass(frozen=True)
class FrameBudget:
  """Batches of about `budget` frames of `key`, examples of similar length together (F5-TTS's sampler).

  Reads `buffer_size` examples, sorts them by length and cuts the sorted run greedily into batches
  whose padded size, rows × frames(bucket), stays within `budget`; frames(n) = ceil(n / hop), so with
  `key="audio"` and `hop` the mel hop, the budget counts mel frames. A batch with bucket length T
  always has rows(T) = budget // frames(T) rows (rounded down to `row_multiple`, e.g. the local device
  count), padded with empty rows, so its shape depends only on T. The batches of a buffer are emitted
  in a seeded random order. Examples with rows(T) = 0 or longer than the longest bucket are dropped
  and counted (`too_long`).
  """
  budget: int
  key: str
  buckets: Buckets
  hop: int = 1
  pad_extra: Mapping[str, Buckets] = dataclasses.field(default_factory=dict)
  buffer_size: int = 1000
  row_multiple: int = 1

  def rows(self, length: int) -> int:
    """Rows of a batch whose `key` is padded to `length`."""
    return self.budget // -(-length // self.hop) // self.row_multiple * self.row_multiple

  def apply(self, ds: grain.IterDataset, seed: int) -> grain.IterDataset:
    ds = Tally(ds, self._drop_too_long, ["too_long"], MAX_DROPS_IN_A_ROW)
    ds = FrameBudgetIterDataset(ds, self, seed)
    return Tally(ds, functools.partial(_fill, key=self.key), ["batches", "filled", "slots"])

  def _drop_too_long(self, example):
    example, counts = _drop_too_long(example, {self.key: self.buckets, **self.pad_extra})
    if example is not None and self.rows(self.buckets(len(example[self.key]))) == 0:
      return None, {"too_long": 1}
    return example, counts

  def plan(self, lengths: Sequence[int], rng: np.random.Generator) -> list[list[int]]:
    """Groups example indices into batches (the greedy cut of the length-sorted order), shuffled."""
    groups = []
    for i in np.argsort(lengths, kind="stable"):
      if groups and len(groups[-1]) < self.rows(self.buckets(lengths[i])):
        groups[-1].append(int(i))
      else:
        groups.append([int(i)])
    return [groups[j] for j in rng.permutation(len(groups))]

  def batch(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    size = self.buckets(max(len(example[self.key]) for example in examples))
    return pad_batch(examples, {self.key: self.buckets, **self.pad_extra}, self.rows(size))


class FrameBudgetIterDataset(grain.IterDataset):
  """Applies a `FrameBudget` plan buffer by buffer."""

  def __init__(self, parent: grain.IterDataset, spec: FrameBudget, seed: int):
    super().__init__(parent)
    self._spec, self._seed = spec, seed

  def __iter__(self):
    return _FrameBudgetIterator(self._parent.__iter__(), self._spec, self._seed)


class _FrameBudgetIterator(grain.DatasetIterator):
  """State: the parent's state before the current buffer and the number of its batches emitted.

  A restore re-reads that buffer from the parent and re-plans it, which gives the same batches since
  the parent is deterministic; no examples are stored in the state.
  """

  def __init__(self, parent, spec, seed):
    super().__init__(parent)
    self._spec, self._seed = spec, seed
    self._buffers = 0  # buffers read so far; seeds each buffer's batch order
    self._start = None  # parent state before the current buffer
    self._groups = []  # the current buffer's batches, as lists of examples
    self._emitted = 0

  def _read_buffer(self):
    self._start = self._parent.get_state()
    examples = list(itertools.islice(self._parent, self._spec.buffer_size))
    rng = np.random.default_rng((self._seed, self._buffers))
    plan = self._spec.plan([len(example[self._spec.key]) for example in examples], rng)
    self._groups = [[examples[i] for i in group] for group in plan]
    self._buffers += 1
    self._emitted = 0

  def __next__(self):
    if self._emitted == len(self._groups):
      self._read_buffer()
      if not self._groups:
        raise StopIteration
    self._emitted += 1
    return self._spec.batch(self._groups[self._emitted - 1])

  def get_state(self):
    if self._emitted == len(self._groups):
      return {"parent": self._parent.get_state(), "buffers": self._buffers, "emitted": 0}
    return {"parent": self._start, "buffers": self._buffers - 1, "emitted": self._emitted}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._buffers, self._groups, self._emitted = state["buffers"], [], 0
    if state["emitted"]:
      self._read_buffer()
      self._emitted = state["emitted"]
