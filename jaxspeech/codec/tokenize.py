"""The tokenize job: every utterance of a TFDS speech dataset as codec codes, written as a new TFDS dataset.

    jaxspeech codec encode --workdir CODEC --data-dir data/synth_speech/1.0.0 --out data/synth_codes/1.0.0

Each split is cut into chunks of `chunk` records; host h of H encodes chunks h, h + H, ... (its rows sharded
over its own devices) and saves each finished chunk as `OUT.parts/<split>-<chunk>.npz` (written to a temporary
name, then renamed). A rerun skips the chunks already saved, so a killed job resumes where it stopped. Once
every chunk exists, process 0 writes the dataset (staged, then renamed into place by `tfds_io`) and the parts
are removed. The output keeps each utterance's id, transcript, speaker and language, and adds its duration
(seconds) and `codes` (int32, 50 per second for X-codec2). Process 0 shows a progress bar over its utterances
(the trainer's, with the rate and the time left) and ends with a one-line summary.
"""

import os
import shutil
import time

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from jaxspeech.codec import family, inference
from jaxspeech.codec.model import Codec
from jaxspeech.data import tfds_io
from jaxspeech.train import metrics
from jaxspeech.workdir import Workdir

KEPT = ("id", "text", "speaker", "speaker_id", "language")
FEATURES = tfds.features.FeaturesDict({
    "id": tfds.features.Text(),
    "codes": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=tfds.features.Encoding.BYTES),
    "duration": np.float32,              # seconds of the source audio
    "text": tfds.features.Text(),
    "speaker": tfds.features.Text(),
    "speaker_id": np.int32,
    "language": tfds.features.Text(),
})


def load_codec(workdir: str) -> tuple[Codec, int, int]:
  """(codec, sample rate, hop) of a codec workdir's newest checkpoint."""
  codec, cfg = Workdir(workdir).load_model(family.FAMILY)
  if codec.semantic:
    raise ValueError(f"the codec in {workdir} has the semantic branch, which needs w2v-BERT 2.0 features "
                     "that jaxspeech does not compute yet")
  return codec, int(cfg.model.sample_rate), codec.hop


def _chunk_path(parts: str, split: str, index: int) -> str:
  return os.path.join(parts, f"{split}-{index:05d}.npz")


def _encode_chunk(codec, sample_rate, hop, records, per_device: int, bucket: int, bar) -> dict[str, np.ndarray]:
  """{"codes": all codes concatenated, "counts": codes per record, "durations": seconds per record}."""
  wavs = [inference.decode_audio(r, sample_rate) for r in records]
  codes, counts = [], []
  encode = lambda wav_BxS, lengths_B: codec.encode(wav_BxS)
  for codes_BxN, _, lengths in inference.run_batched(encode, wavs, per_device=per_device, bucket=bucket):
    for row, length in zip(codes_BxN, lengths):
      if length:
        counts.append(-(-int(length) // hop))
        codes.append(row[:counts[-1]])
        bar.update(1)
  return {"codes": np.concatenate(codes).astype(np.int32), "counts": np.array(counts, np.int64),
          "durations": np.array([len(w) / sample_rate for w in wavs], np.float32)}


def encode_dataset(workdir: str, data_dir: str, out: str, *, splits: list[str] | None = None, chunk: int = 64,
                   per_device: int = 4, bucket_seconds: float = 1.0) -> str:
  """Writes the codes of every record of `splits` (default: all) of `data_dir` as a TFDS dataset at `out`."""
  start = time.monotonic()
  tfds_io.check_dataset_path(out)
  codec, sample_rate, hop = load_codec(workdir)
  bucket = max(int(bucket_seconds * sample_rate) // hop, 1) * hop
  info = tfds_io.load(data_dir).info
  splits = sorted(info.splits) if splits is None else splits
  parts = os.path.abspath(out) + ".parts"
  os.makedirs(parts, exist_ok=True)
  sizes = {s: info.splits[s].num_examples for s in splits}
  mine = {s: list(range(jax.process_index(), -(-sizes[s] // chunk), jax.process_count())) for s in splits}
  rows = lambda s, index: min((index + 1) * chunk, sizes[s]) - index * chunk
  saved = sum(rows(s, i) for s in splits for i in mine[s] if os.path.exists(_chunk_path(parts, s, i)))
  bar = metrics.progress_bar(sum(rows(s, i) for s in splits for i in mine[s]), saved, unit="utt",
                             disable=jax.process_index() != 0)
  encoded = {"utterances": 0, "seconds": 0.0, "codes": 0}
  for split in splits:
    source = tfds_io.data_source(data_dir, split)
    for index in mine[split]:
      path = _chunk_path(parts, split, index)
      if os.path.exists(path):
        continue
      records = [source[i] for i in range(index * chunk, index * chunk + rows(split, index))]
      arrays = _encode_chunk(codec, sample_rate, hop, records, per_device, bucket, bar)
      np.savez(path + ".tmp.npz", **arrays)
      os.replace(path + ".tmp.npz", path)
      encoded["utterances"] += len(records)
      encoded["seconds"] += float(arrays["durations"].sum())
      encoded["codes"] += int(arrays["counts"].sum())
  bar.close()
  multihost_utils.sync_global_devices("codec encode: every chunk saved")
  if jax.process_index() == 0:
    metadata = {**tfds_io.metadata(data_dir), "source": os.path.abspath(data_dir), "codec": os.path.abspath(workdir),
                "sample_rate": sample_rate, "codes_per_second": sample_rate / hop,
                "codebook_size": codec.quantizer.codebook_size}
    tfds_io.write_dataset(out, FEATURES, {s: _examples(data_dir, s, sizes[s], parts, chunk) for s in splits},
                          description=f"codes of {data_dir} by the codec in {workdir}", metadata=metadata)
    shutil.rmtree(parts)
    print(summary(encoded, saved, time.monotonic() - start, jax.process_count()))
  multihost_utils.sync_global_devices("codec encode: dataset written")
  return out


def summary(encoded: dict, resumed: int, wall_s: float, hosts: int) -> str:
  """The job's last line: what this host encoded (utterances, seconds of audio, codes written), in what time."""
  line = (f"codec encode: {encoded['utterances']:,} utterances, {encoded['seconds']:,.1f} s of audio, "
          f"{encoded['codes']:,} codes written in {wall_s:,.1f} s")
  notes = ([f"{resumed:,} utterances already encoded by an earlier run"] if resumed else []) + (
      [f"process 0 of {hosts}"] if hosts > 1 else [])
  return line + (f" ({'; '.join(notes)})" if notes else "")


def _examples(data_dir: str, split: str, size: int, parts: str, chunk: int):
  source = tfds_io.data_source(data_dir, split)
  for index in range(-(-size // chunk)):
    arrays = np.load(_chunk_path(parts, split, index))
    codes = np.split(arrays["codes"], np.cumsum(arrays["counts"])[:-1])
    for offset, (row, duration) in enumerate(zip(codes, arrays["durations"])):
      record = source[index * chunk + offset]
      yield {"codes": row, "duration": duration,
             **{k: record[k].decode() if isinstance(record[k], bytes) else record[k] for k in KEPT}}
