import numpy as np

from jaxspeech.data import packing, pipeline

SEQ_LEN = 16


def _tokens():
  lengths = np.random.default_rng(0).integers(0, 30, 60)
  return {i: (1000 * (i + 1) + np.arange(n)).astype(np.int32) for i, n in enumerate(lengths)}


def _identity(record, rng):
  del rng
  return record


def _pack(tokens, drop_remainder=True):
  spec = packing.Packing(seq_len=SEQ_LEN, batch_size=3, num_bins=6, drop_remainder=drop_remainder)
  ds = pipeline.make_pipeline([{"tokens": t} for t in tokens.values()], seed=0, map_fn=_identity, batching=spec,
                              shard_index=0, shard_count=1, num_epochs=1)
  iterator = pipeline.make_iterator(ds)
  return list(iterator), pipeline.pipeline_stats(iterator)


def test_segments_hold_whole_examples_and_targets_stay_inside():
  tokens = _tokens()
  batches, _ = _pack(tokens, drop_remainder=False)
  seen = []
  for batch in batches:
    assert {k: v.shape for k, v in batch.items()} == {**dict.fromkeys(
        ["inputs", "targets", "segment_ids", "positions", "weights"], (3, SEQ_LEN)), "valid": (3,)}
    np.testing.assert_array_equal(batch["weights"], batch["segment_ids"] > 0)
    for row in range(3):
      segment_ids_L = batch["segment_ids"][row]
      count = segment_ids_L.max()
      assert batch["valid"][row] == (count > 0)
      assert (segment_ids_L[(segment_ids_L > 0).sum():] == 0).all()  # padding only at the end
      for s in range(1, count + 1):
        at = segment_ids_L == s
        inputs, targets = batch["inputs"][row][at], batch["targets"][row][at]
        example = tokens[inputs[0] // 1000 - 1][:SEQ_LEN + 1]
        np.testing.assert_array_equal(batch["positions"][row][at], np.arange(at.sum()))
        np.testing.assert_array_equal(inputs, example[:-1])
        np.testing.assert_array_equal(targets, example[1:])  # each target is the next token of its own example
        seen.append(inputs[0] // 1000 - 1)
      assert not batch["inputs"][row][segment_ids_L == 0].any()
  assert sorted(seen) == [i for i, t in tokens.items() if len(t) >= 2]


def test_efficiency_and_drops_are_counted():
  tokens = _tokens()
  batches, stats = _pack(tokens, drop_remainder=False)  # so that every example is consumed
  filled = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
  assert (stats["filled"], stats["slots"]) == (filled, len(batches) * 3 * SEQ_LEN)
  assert stats["efficiency"] == filled / (len(batches) * 3 * SEQ_LEN) > 0.8
  assert stats["too_short"] == sum(len(t) < 2 for t in tokens.values())
  assert stats["truncated_tokens"] == sum(max(len(t) - SEQ_LEN - 1, 0) for t in tokens.values())
  assert stats["batches"] == len(batches)


def test_remainder_is_padded_with_empty_rows():
  kept, _ = _pack(_tokens(), drop_remainder=True)
  padded, _ = _pack(_tokens(), drop_remainder=False)
  assert len(padded) - len(kept) in (0, 1)
  for a, b in zip(kept, padded):
    np.testing.assert_array_equal(a["segment_ids"], b["segment_ids"])
  last = padded[-1]
  assert not last["weights"][~last["valid"]].any() and not last["segment_ids"][~last["valid"]].any()
