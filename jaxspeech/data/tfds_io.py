"""Writes and reads TFDS datasets stored as ArrayRecord, with no TensorFlow.

TFDS's own builder serialises `tf.train.Example` maps in upb's per-process hash order, so the
same examples give different bytes on every run. This writer serialises with sorted map keys,
which makes a dataset a pure function of its examples. The output is an ordinary TFDS dataset
directory: `tfds.builder_from_directory(path).as_data_source(split)` reads it.
"""

from collections.abc import Iterable, Mapping
import json
import os
import re
import shutil
import uuid

from array_record.python import array_record_module
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from jaxspeech import storage

DEFAULT_SHARD_BYTES = 256 << 20


def check_dataset_path(path: str | os.PathLike) -> str:
  """`path` made absolute, if it is a `name/version` dir TFDS can load (name: lowercase snake_case, version
  x.y.z); else a ValueError naming the part that is not, before any work is spent on the dataset."""
  storage.local_only(os.fspath(path), "dataset")
  path = os.path.abspath(os.fspath(path))
  name, version = os.path.basename(os.path.dirname(path)), os.path.basename(path)
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise ValueError(f"dataset directory {path}: its parent {name!r} is the dataset name, which TFDS requires in "
                     "lowercase snake_case (letters, digits, '_'), e.g. synth_codes/1.0.0")
  if not re.fullmatch(r"\d+\.\d+\.\d+", version):
    raise ValueError(f"dataset directory {path}: its last part {version!r} is the version, which TFDS requires "
                     "as x.y.z, e.g. synth_codes/1.0.0")
  return path


def write_dataset(path: str | os.PathLike, features: tfds.features.FeaturesDict,
                  splits: Mapping[str, Iterable[Mapping]], *, description: str = "",
                  shard_bytes: int = DEFAULT_SHARD_BYTES, metadata: Mapping | None = None) -> str:
  """Writes `splits` ({split: examples}) as a TFDS dataset at `path` (a `name/version` dir).

  The dataset appears at `path` only once every split is complete: it is built in a sibling
  temporary directory and renamed into place, replacing any earlier dataset there.
  """
  path = check_dataset_path(path)
  name, version = os.path.basename(os.path.dirname(path)), os.path.basename(path)
  tmp = os.path.join(os.path.dirname(path), f".incomplete-{version}-{uuid.uuid4().hex[:8]}")
  os.makedirs(tmp)
  try:
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    template = tfds.core.ShardedFileTemplate(data_dir=tmp, dataset_name=name, filetype_suffix="array_record",
                                            template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
    infos = []
    for split, examples in splits.items():
      shard_lengths, shard_sizes = _write_split(tmp, name, split, examples, features, serializer, shard_bytes)
      _rename_shards(tmp, name, split, template, len(shard_lengths))
      infos.append(tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths, num_bytes=sum(shard_sizes),
                                       filename_template=template.replace(split=split)))
    tfds.folder_dataset.write_metadata(data_dir=tmp, features=features, split_infos=infos, version=version,
                                       filename_template=template, check_data=False, description=description)
    if metadata is not None:
      with open(os.path.join(tmp, "jaxspeech.json"), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    if os.path.exists(path):
      shutil.rmtree(path)
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def _write_split(tmp, name, split, examples, features, serializer, shard_bytes):
  lengths, sizes, writer = [], [], None
  for example in examples:
    record = serializer.get_tf_example(features.encode_example(example)).SerializeToString(deterministic=True)
    if writer is None or sizes[-1] + len(record) > shard_bytes and lengths[-1] > 0:
      if writer is not None:
        writer.close()
      # group_size:1 keeps every record independently seekable, as Grain's random access needs.
      writer = array_record_module.ArrayRecordWriter(_partial(tmp, name, split, len(lengths)), "group_size:1")
      lengths.append(0)
      sizes.append(0)
    writer.write(record)
    lengths[-1] += 1
    sizes[-1] += len(record)
  if writer is not None:
    writer.close()
  return lengths, sizes


def _partial(tmp, name, split, index):
  return os.path.join(tmp, f"{name}-{split}.partial-{index:05d}")


def _rename_shards(tmp, name, split, template, num_shards):
  for i in range(num_shards):
    final = template.replace(split=split).sharded_filepath(shard_index=i, num_shards=num_shards)
    os.replace(_partial(tmp, name, split, i), os.fspath(final))


def load(path: str | os.PathLike) -> tfds.core.DatasetBuilder:
  """Opens a dataset directory written by `write_dataset` (or by TFDS itself)."""
  path = os.fspath(path)
  storage.local_only(path, "dataset")
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    raise FileNotFoundError(f"no TFDS dataset at {path} (dataset_info.json is missing); "
                            "build one with `jaxspeech data synth` or `jaxspeech data build`")
  return tfds.builder_from_directory(path)


def data_source(path: str | os.PathLike, split: str):
  """Random-access source of decoded examples (dicts of numpy arrays / bytes) for one split."""
  builder = load(path)
  if split not in builder.info.splits:
    raise KeyError(f"dataset at {path} has no split {split!r}; it has {sorted(builder.info.splits)}")
  return builder.as_data_source(split=split)


def require_features(path: str | os.PathLike, needed: Iterable[str], user: str, hint: str = "") -> None:
  """A one-line ValueError naming the dataset's features and what `user` (e.g. "the llasa family") needs, when the
  dataset at `path` lacks any of the `needed` features: else a pipeline would skip every record as undecodable."""
  needed = list(needed)
  features = sorted(load(path).info.features.keys())
  missing = [name for name in needed if name not in features]
  if missing:
    raise ValueError(f"dataset {os.fspath(path)} has features {', '.join(features)}, but {user} needs "
                     f"{', '.join(needed)} ({', '.join(missing)} missing)" + (f"; {hint}" if hint else ""))


def metadata(path: str | os.PathLike) -> dict:
  """The jaxspeech metadata (sample rate, speakers, build report) stored with a dataset."""
  file = os.path.join(os.fspath(path), "jaxspeech.json")
  if not os.path.exists(file):
    return {}
  with open(file) as f:
    return json.load(f)
