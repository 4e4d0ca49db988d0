"""Sequence packing for token streams: several examples per row of `seq_len` slots.

Each example's tokens t[0..n-1] become n-1 (input, target) pairs before packing: inputs t[:-1],
targets t[1:]. A target therefore always belongs to its input's segment, and no slot is spent on a
token that has nothing to predict. Examples longer than `seq_len + 1` tokens are truncated to their
first `seq_len + 1` tokens (the cut tokens are counted as `truncated_tokens`); examples with fewer
than 2 tokens have no pair and are dropped (`too_short`).

A batch holds, all [batch_size, seq_len]:
  inputs, targets   token ids, 0 in padding slots
  segment_ids       int32, 1..k for the k examples of a row, 0 for padding
  positions         int32, restarting at 0 for every segment
  weights           float32, 1 where the target is real (segment_ids > 0), 0 elsewhere
  valid             bool [batch_size], False for the empty rows padding a final short batch

Packing is Grain's first-fit packer over `num_bins` open rows (the rows are emitted, shuffled, once
an example fits none of them); its state is the parent's state plus the rows emitted, so a restore
re-packs the same rows. Efficiency (real tokens / slots) is counted as `filled` / `slots`.
"""

import dataclasses
import functools

import grain
import numpy as np

from jaxspeech.data import batching


def _shift(example, key: str, seq_len: int):
  tokens_N = np.asarray(example[key])
  if len(tokens_N) < 2:
    return None, {"too_short": 1}
  kept_N = tokens_N[:seq_len + 1]
  return {"inputs": kept_N[:-1], "targets": kept_N[1:]}, {"truncated_tokens": len(tokens_N) - len(kept_N)}


def _row(packed):
  segment_ids_L = packed["inputs_segment_ids"]
  return {"inputs": packed["inputs"], "targets": packed["targets"], "segment_ids": segment_ids_L,
          "positions": packed["inputs_positions"], "weights": (segment_ids_L > 0).astype(np.float32)}


def _fill(batch):
  return batch, {"batches": 1, "filled": int((batch["segment_ids"] > 0).sum()), "slots": batch["segment_ids"].size}


@dataclasses.dataclass(frozen=True)
class Packing:
  """Packs `key` (a 1-D token array per example) into [batch_size, seq_len] batches."""
  seq_len: int
  batch_size: int
  key: str = "tokens"
  num_bins: int | None = None  # open rows of the first-fit packer; default batch_size
  drop_remainder: bool = True

  def apply(self, ds: grain.IterDataset, seed: int) -> grain.IterDataset:
    ds = batching.Tally(ds, functools.partial(_shift, key=self.key, seq_len=self.seq_len),
                        ["too_short", "truncated_tokens"])
    ds = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct={"inputs": self.seq_len, "targets": self.seq_len},
        num_packing_bins=self.num_bins or self.batch_size, seed=seed, shuffle_bins=True)
    ds = ds.map(_row)
    ds = ds.batch(self.batch_size, drop_remainder=self.drop_remainder,
                  batch_fn=functools.partial(batching.pad_batch, pad={}, rows=self.batch_size))
    return batching.Tally(ds, _fill, ["batches", "filled", "slots"])


def pack_sequences(sequences: list, seq_len: int) -> dict[str, np.ndarray]:
  """Whole sequences (none longer than `seq_len`) as rows of `seq_len` slots, by the first-fit packer above with
  one bin per sequence, longest first (first-fit decreasing), shuffling nothing: "inputs", "segment_ids" and
  "positions" as `Packing`'s rows, and "index": the sequence each slot holds (-1 in padding)."""
  order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
  examples = [{"inputs": np.asarray(sequences[i], np.int32), "index": np.full(len(sequences[i]), i + 1, np.int32)}
              for i in order]
  rows = list(grain.experimental.FirstFitPackIterDataset(
      grain.MapDataset.source(examples).to_iter_dataset(), length_struct={"inputs": seq_len, "index": seq_len},
      num_packing_bins=len(examples), shuffle_bins=False))
  stack = {"inputs": "inputs", "segment_ids": "inputs_segment_ids", "positions": "inputs_positions", "index": "index"}
  out = {name: np.stack([r[key] for r in rows]) for name, key in stack.items()}
  return {**out, "index": out["index"] - 1}
