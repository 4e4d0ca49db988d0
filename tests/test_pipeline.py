import glob
import json
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from array_record.python import array_record_module

from jaxspeech.data import batching, packing, pipeline, schema, tfds_io

NUM_EXAMPLES = 48
RATE = 16_000
TOKENS = {"tokens": batching.Buckets(multiple=8)}
FIXED = batching.FixedBatch(4, "audio", batching.Buckets(multiple=512), pad_extra=TOKENS, drop_remainder=False)
BUDGET = batching.FrameBudget(budget=64, key="audio", hop=160, buckets=batching.Buckets((800, 1600, 3200)),
                              pad_extra=TOKENS, buffer_size=12)
PACKING = packing.Packing(seq_len=24, batch_size=2, key="tokens", num_bins=4)
ONE = batching.FixedBatch(1, "audio", batching.Buckets(multiple=512), pad_extra=TOKENS)


def _examples(lengths, rates=None):
  rng = np.random.default_rng(0)
  rates = rates or [RATE] * len(lengths)
  return [dict(id=f"u{i:03d}", audio=rng.integers(-3000, 3000, n).astype(np.int16), sample_rate=rate,
               text=f"text {i}", speaker="s", speaker_id=0, language="en")
          for i, (n, rate) in enumerate(zip(lengths, rates))]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  lengths = np.random.default_rng(1).integers(200, 3000, NUM_EXAMPLES).tolist()
  rates = [8_000 if i % 8 == 0 else RATE for i in range(NUM_EXAMPLES)]
  path = tmp_path_factory.mktemp("ds") / "speech" / "1.0.0"
  return tfds_io.data_source(tfds_io.write_dataset(path, schema.SPEECH_FEATURES, {"train": _examples(lengths, rates)}),
                             "train")


def _with_index(example, record):
  index = int(record["id"][1:])
  return {**example, "index": np.int32(index),
          "tokens": np.arange(len(example["audio"]) // 100 + 1, dtype=np.int32) + 1000 * index}


DECODE = pipeline.DecodeSpeech(RATE, crop_samples=2400, features=_with_index)


def _pipeline(source, batching_=FIXED, *, seed=0, shard_index=0, shard_count=1, **kwargs):
  return pipeline.make_pipeline(source, seed=seed, map_fn=DECODE, batching=batching_, shard_index=shard_index,
                                shard_count=shard_count, **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # bit-for-bit


def _indices(batches):
  return [int(i) for b in batches for i in b["index"][b["valid"]]]


def test_same_seed_same_batches_other_seed_other_order(source):
  a = list(_pipeline(source, num_epochs=1))
  _assert_same(a, list(_pipeline(source, num_epochs=1)))
  other = _indices(list(_pipeline(source, num_epochs=1, seed=1)))
  assert other != _indices(a) and sorted(other) == sorted(_indices(a))


def test_decode_resamples_crops_and_pads(source):
  batches = list(_pipeline(source, num_epochs=1))
  for b in batches:
    assert b["audio"].dtype == np.float32 and b["audio"].shape[1] % 512 == 0
    assert (b["audio_lengths"] <= 2400).all()
    np.testing.assert_array_equal(b["audio_mask"], np.arange(b["audio"].shape[1]) < b["audio_lengths"][:, None])
    assert not b["audio"][~b["audio_mask"]].any()
  lengths = {int(i): int(n) for b in batches for i, n in zip(b["index"][b["valid"]], b["audio_lengths"][b["valid"]])}
  record = source[0]  # 8 kHz: twice the samples at 16 kHz, cropped to 2400
  assert lengths[0] == min(2 * len(record["audio"]), 2400)
  assert lengths[1] == min(len(source[1]["audio"]), 2400)


@pytest.mark.parametrize("hosts", [1, 2, 3])
def test_hosts_split_one_global_stream(source, hosts):
  """Host h takes global positions h, h+H, ...: each global epoch covers every record once, and
  interleaving the hosts' streams gives the single-host stream, whatever the host count."""
  one = pipeline.make_pipeline(source, seed=0, map_fn=DECODE, batching=ONE,
                               shard_index=0, shard_count=1, num_epochs=2)
  expected = _indices(list(one))
  streams = [_indices(list(pipeline.make_pipeline(
      source, seed=0, map_fn=DECODE, batching=ONE, shard_index=h, shard_count=hosts,
      num_epochs=2))) for h in range(hosts)]
  merged = [streams[p % hosts][p // hosts] for p in range(2 * NUM_EXAMPLES)]
  assert merged == expected
  first, second = merged[:NUM_EXAMPLES], merged[NUM_EXAMPLES:]
  assert sorted(first) == sorted(second) == list(range(NUM_EXAMPLES))
  assert first != second  # reshuffled each epoch
  for h in range(hosts):
    assert not set(streams[h][:NUM_EXAMPLES // hosts]) & set().union(
        *(streams[g][:NUM_EXAMPLES // hosts] for g in range(hosts) if g != h))


def test_crops_depend_on_record_and_epoch_not_on_hosts(source):
  def audio_by_index(batches):
    return {int(i): a[:n].tobytes() for b in batches
            for i, a, n in zip(b["index"][b["valid"]], b["audio"], b["audio_lengths"])}
  one = audio_by_index(list(_pipeline(source, num_epochs=1)))
  two = {**audio_by_index(list(_pipeline(source, num_epochs=1, shard_index=0, shard_count=2))),
         **audio_by_index(list(_pipeline(source, num_epochs=1, shard_index=1, shard_count=2)))}
  assert one == two


def _epoch_batches(source, batching_):
  return len(list(_pipeline(source, batching_, num_epochs=1)))


@pytest.mark.parametrize("batching_", [FIXED, BUDGET, PACKING], ids=["fixed", "frame_budget", "packing"])
@pytest.mark.parametrize("where", ["first_batch", "mid_epoch", "across_epochs"])
def test_resume_is_exact(source, batching_, where):
  per_epoch = _epoch_batches(source, batching_)
  k = {"first_batch": 1, "mid_epoch": per_epoch // 2, "across_epochs": per_epoch - 2}[where]
  iterator = pipeline.make_iterator(_pipeline(source, batching_))
  _take(iterator, k)
  state = json.dumps(iterator.get_state())
  stats = pipeline.pipeline_stats(iterator)
  expected = _take(iterator, 5)
  restored = pipeline.make_iterator(_pipeline(source, batching_), state)
  assert pipeline.pipeline_stats(restored) == stats
  _assert_same(_take(restored, 5), expected)
  assert pipeline.pipeline_stats(restored) == pipeline.pipeline_stats(iterator)


def test_resume_through_orbax(source, tmp_path):
  iterator = pipeline.make_iterator(_pipeline(source, BUDGET))
  _take(iterator, 7)
  checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  checkpointer.save(tmp_path / "step7", args=grain.checkpoint.CheckpointSave(iterator))
  expected = _take(iterator, 4)
  restored = checkpointer.restore(tmp_path / "step7", args=grain.checkpoint.CheckpointRestore(
      pipeline.make_iterator(_pipeline(source, BUDGET))))
  _assert_same(_take(restored, 4), expected)


def test_frame_budget_batches_fit_and_cover_each_epoch(source):
  batches = list(_pipeline(source, BUDGET, num_epochs=1))
  for b in batches:
    rows, size = b["audio"].shape
    assert size in (800, 1600, 3200) and rows * -(-size // BUDGET.hop) <= BUDGET.budget
    assert rows == BUDGET.rows(size) and (b["audio_lengths"][b["valid"]] > 0).all()
  assert sorted(_indices(batches)) == list(range(NUM_EXAMPLES))


def test_frame_budget_sorts_its_buffer():
  spec = batching.FrameBudget(budget=8, key="x", buckets=batching.Buckets((2, 4, 8)))
  groups = spec.plan([8, 1, 3, 2, 1, 4, 1, 1, 1], np.random.default_rng(0))
  assert sorted(sorted(g) for g in groups) == [[0], [1, 4, 6, 7], [2, 5], [3, 8]]


def _corrupt(path, index):
  (shard,) = glob.glob(os.path.join(path, "*.array_record-*"))
  reader = array_record_module.ArrayRecordReader(shard)
  records = reader.read_all()
  reader.close()
  records[index] = b"\x0a\xff\xff not a tf.Example"
  writer = array_record_module.ArrayRecordWriter(shard, "group_size:1")
  for record in records:
    writer.write(record)
  writer.close()


def test_undecodable_records_are_skipped_and_counted(tmp_path):
  examples = _examples([300] * 10)
  examples[4]["audio"] = np.zeros(0, np.int16)
  path = tfds_io.write_dataset(tmp_path / "bad" / "1.0.0", schema.SPEECH_FEATURES, {"train": examples})
  _corrupt(path, 7)
  iterator = pipeline.make_iterator(_pipeline(tfds_io.data_source(path, "train"), num_epochs=1))
  indices = _indices(list(iterator))
  assert sorted(indices) == [0, 1, 2, 3, 5, 6, 8, 9]
  stats = pipeline.pipeline_stats(iterator)
  assert (stats["examples"], stats["read_errors"], stats["decode_errors"]) == (8, 1, 1)


def test_everything_undecodable_raises(tmp_path):
  path = tfds_io.write_dataset(tmp_path / "empty" / "1.0.0", schema.SPEECH_FEATURES,
                               {"train": _examples([0] * 3)})
  with pytest.raises(RuntimeError, match="in a row were dropped"):
    next(iter(_pipeline(tfds_io.data_source(path, "train"))))


def test_workers_give_the_same_batches_and_resume(source):
  expected = _take(iter(_pipeline(source, BUDGET)), 8)
  iterator = pipeline.make_iterator(_pipeline(source, BUDGET, worker_count=2))
  _assert_same(_take(iterator, 5), expected[:5])
  state = iterator.get_state()
  iterator.close()
  restored = pipeline.make_iterator(_pipeline(source, BUDGET, worker_count=2), state)
  _assert_same(_take(restored, 3), expected[5:])
  restored.close()


def test_global_batch_on_8_devices():
  assert jax.device_count() == 8
  mesh = jax.make_mesh((4, 2), ("data", "model"))
  batch = {"audio": np.arange(8 * 6, dtype=np.float32).reshape(8, 6), "audio_lengths": np.arange(8, dtype=np.int32)}
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  arrays = pipeline.global_batch({**batch, "text": np.zeros(8)}, {key: data for key in batch})
  assert arrays.keys() == batch.keys()
  for key, x in batch.items():
    assert arrays[key].shape == x.shape and arrays[key].sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(arrays[key]), x)
  assert {s.data.shape for s in arrays["audio"].addressable_shards} == {(2, 6)}


@pytest.mark.parametrize("batcher", [
    batching.FixedBatch(2, "audio", batching.Buckets(lengths=(8,))),
    batching.FrameBudget(64, "audio", batching.Buckets(lengths=(8,)))])
def test_a_stream_where_every_example_is_too_long_stops_with_an_error(batcher):
  """An endless stream whose examples all exceed the buckets would spin forever; it raises instead."""
  ds = grain.MapDataset.source([{"audio": np.zeros(16, np.int16)}]).repeat().to_iter_dataset()
  with pytest.raises(RuntimeError, match="in a row were dropped.*too_long"):
    next(iter(batcher.apply(ds, seed=0)))


@pytest.mark.parametrize("parts, message", [(("codes_lr2e-4", "1.0.0"), "lowercase snake_case"),
                                            (("codes", "v1"), "as x.y.z")])
def test_a_dataset_path_tfds_cannot_load_is_refused_before_writing(tmp_path, parts, message):
  with pytest.raises(ValueError, match=message):
    tfds_io.write_dataset(tmp_path.joinpath(*parts), schema.SPEECH_FEATURES, {"train": []})
  assert not any(tmp_path.iterdir())
