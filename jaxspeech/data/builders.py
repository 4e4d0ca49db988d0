"""Builds jaxspeech datasets from speech corpora on disk: LJSpeech, LibriTTS(-R), JSON-lines manifests.

`build` reads the audio twice, streaming one file at a time: the first pass decides which
utterances are kept, so that the speaker list, the splits and the report are final before the
second pass converts the kept ones and `tfds_io.write_dataset` writes them.

Bad input never stops a build. Each utterance is kept or skipped for one reason:
  malformed_line      a metadata or manifest line that does not parse or lacks a required field
  non_utf8_text       the transcript (or its line) is not valid UTF-8
  missing_transcript  audio without a transcript
  empty_transcript    a transcript of only whitespace
  missing_audio       a transcript without its audio file
  outside_layout      LibriTTS audio that is not inside <speaker>/<chapter>/ (a subset's name is no speaker)
  duplicate_id        an id seen before (the first is kept)
  unreadable_audio    libsndfile cannot open or decode it: non-audio bytes, an empty file, a cut header
  truncated_audio     the file ends before the samples its header declares
  empty_audio         no samples
  too_long            longer than `max_seconds`
  non_finite_audio    NaN or infinite samples
A kept example may be repaired: "downmixed" (the mean of its channels), "resampled" (to
`sample_rate`). Without `sample_rate` every example keeps its file's rate, stored per example.
16-bit files are read as int16 and stay exact; other sample formats are rounded to int16.
"""

import collections
import dataclasses
import hashlib
import os
import re

import numpy as np
import soundfile as sf

from jaxspeech.audio.io import resample, to_int16
from jaxspeech.data import schema, tfds_io
from jaxspeech.data.layouts import LAYOUTS, BuildError, Skipped, Utterance

VERSION = "1.0.0"
SPLITS = ("train", "validation", "test")
_LISTED_PER_REASON = 10
# libsndfile reads a cut-off WAV up to its end and only logs that the data chunk is short.
_SHORT_WAV_DATA = re.compile(r"^data : (\d+) \(should be \d+\)$", re.M)
_STREAMED_WAV_SIZE = 0xFFFFFFFF  # written by encoders that never learned the length: not truncation


@dataclasses.dataclass(frozen=True)
class BuildResult:
  path: str     # the dataset directory, {data_dir}/{name}/1.0.0
  report: dict  # also stored as "build_report" in the dataset's jaxspeech.json


def build(dataset: str, manual_dir: str, data_dir: str, *, max_seconds: float = 30.0,
          sample_rate: int | None = None, validation_fraction: float = 0.02, name: str | None = None) -> BuildResult:
  """Builds the corpus at `manual_dir` (laid out as `dataset`, a key of LAYOUTS) into `data_dir`.

  The dataset is written to `{data_dir}/{name or dataset}/1.0.0`, replacing any earlier one there.
  Splits follow the layout (LibriTTS subsets, a manifest's "split"), everything else is train. When
  no utterance is validation, the train utterances whose id hashes below `validation_fraction`
  become validation (at least one, never all). Speaker ids index the sorted speaker names.
  """
  if dataset not in LAYOUTS:
    raise BuildError(f"unknown dataset {dataset!r}; expected one of {sorted(LAYOUTS)}")
  root = os.path.abspath(manual_dir)
  if not os.path.exists(root):
    raise BuildError(f"manual dir {root} does not exist")
  base = root if os.path.isdir(root) else os.path.dirname(root)
  report = _Report()
  kept = _readable(_unique(LAYOUTS[dataset](root), base, report), base, max_seconds, sample_rate, report)
  if not kept:
    raise BuildError(f"no usable examples in {root}:\n{format_report(report.as_dict({}))}")
  splits = _split(kept, validation_fraction)
  speakers = sorted({u.speaker for u in kept})
  speaker_ids = {speaker: i for i, speaker in enumerate(speakers)}
  summary = report.as_dict({split: len(utterances) for split, utterances in splits.items()})
  rates = list(report.sample_rates)
  metadata = {"layout": dataset, "speakers": speakers, "build_report": summary,
              "sample_rate": rates[0] if len(rates) == 1 else None}
  examples = {split: _examples(utterances, speaker_ids, max_seconds, sample_rate)
              for split, utterances in splits.items()}
  path = tfds_io.write_dataset(os.path.join(data_dir, name or dataset, VERSION), schema.SPEECH_FEATURES, examples,
                               description=f"Built by `jaxspeech data build --dataset {dataset}`.",
                               metadata=metadata)
  print(format_report(summary))
  return BuildResult(path, summary)


def format_report(report: dict) -> str:
  """The report as a small table: kept/total, then a count per reason, repair and split."""
  rows = [("skipped", reason, count) for reason, count in report["skipped"].items()]
  rows += [("repaired", reason, count) for reason, count in report["repaired"].items()]
  rows += [("split", split, count) for split, count in report["splits"].items()]
  lines = [f"kept {report['kept']} of {report['total']} utterances"]
  lines += [f"  {kind:<9}{reason:<20}{count:>8}" for kind, reason, count in rows]
  return "\n".join(lines)


class _Report:
  """Counts per skip reason (with the first few places each happened) and per repair."""

  def __init__(self):
    self.skipped = collections.Counter()
    self.listed = collections.defaultdict(list)
    self.repaired = collections.Counter()
    self.sample_rates = collections.Counter()

  def skip(self, reason: str, where: str):
    self.skipped[reason] += 1
    if len(self.listed[reason]) < _LISTED_PER_REASON:
      self.listed[reason].append(where)

  def as_dict(self, splits: dict[str, int]) -> dict:
    kept = sum(self.sample_rates.values())
    return {"total": kept + self.skipped.total(), "kept": kept, "splits": splits,
            "skipped": dict(sorted(self.skipped.items())), "skipped_where": dict(sorted(self.listed.items())),
            "repaired": dict(sorted(self.repaired.items())),
            "sample_rates": {str(rate): n for rate, n in sorted(self.sample_rates.items())}}


def _unique(scan, base: str, report: _Report) -> list[Utterance]:
  """The scanned utterances sorted by id, dropping repeated ids; records the scan's skips."""
  utterances, seen = [], set()
  for item in scan:
    if isinstance(item, Skipped):
      report.skip(item.reason, item.where)
    elif item.id in seen:
      report.skip("duplicate_id", os.path.relpath(item.audio, base))
    else:
      seen.add(item.id)
      utterances.append(item)
  return sorted(utterances, key=lambda u: u.id)


def _readable(utterances, base, max_seconds, sample_rate, report) -> list[Utterance]:
  """The utterances whose audio passes every check; records skips, repairs and output rates."""
  kept = []
  for u in utterances:
    try:
      samples_FxC, rate = _read(u.audio, max_seconds)
    except _Rejected as rejected:
      report.skip(rejected.reason, os.path.relpath(u.audio, base))
      continue
    if samples_FxC.shape[1] > 1:
      report.repaired["downmixed"] += 1
    if sample_rate and rate != sample_rate:
      report.repaired["resampled"] += 1
    report.sample_rates[sample_rate or rate] += 1
    kept.append(u)
  return kept


class _Rejected(Exception):

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def _read(path: str, max_seconds: float) -> tuple[np.ndarray, int]:
  """(samples_FxC, sample rate): int16 for 16-bit PCM files, float64 for any other format."""
  try:
    with sf.SoundFile(path) as f:
      _check_header(f, max_seconds)
      samples_FxC = f.read(dtype="int16" if f.subtype == "PCM_16" else "float64", always_2d=True)
      frames, rate = f.frames, f.samplerate
  except (RuntimeError, OSError):
    raise _Rejected("unreadable_audio") from None
  if len(samples_FxC) < frames:
    raise _Rejected("truncated_audio")
  if samples_FxC.dtype == np.float64 and not np.isfinite(samples_FxC).all():
    raise _Rejected("non_finite_audio")
  return samples_FxC, rate


def _check_header(f: sf.SoundFile, max_seconds: float):
  short = _SHORT_WAV_DATA.search(f.extra_info)
  if short and int(short[1]) != _STREAMED_WAV_SIZE:
    raise _Rejected("truncated_audio")
  if f.frames == 0:
    raise _Rejected("empty_audio")
  if f.frames > max_seconds * f.samplerate:
    raise _Rejected("too_long")


def _split(kept: list[Utterance], validation_fraction: float) -> dict[str, list[Utterance]]:
  splits = {split: [u for u in kept if u.split == split] for split in SPLITS}
  train = splits["train"]
  if not splits["validation"] and len(train) >= 2:
    ranked = sorted(train, key=lambda u: _unit_hash(u.id))
    held_out = sum(_unit_hash(u.id) < validation_fraction for u in train)
    validation = {u.id for u in ranked[:min(max(held_out, 1), len(train) - 1)]}
    splits["train"] = [u for u in train if u.id not in validation]
    splits["validation"] = [u for u in train if u.id in validation]
  return {split: utterances for split, utterances in splits.items() if utterances}


def _unit_hash(uid: str) -> float:
  """A fixed pseudo-random number in [0, 1) per id."""
  return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") / 2**64


def _examples(utterances, speaker_ids, max_seconds, sample_rate):
  for u in utterances:
    try:
      samples_FxC, rate = _read(u.audio, max_seconds)
    except _Rejected as rejected:
      raise BuildError(f"{u.audio} changed during the build; it is now {rejected.reason}") from None
    yield {"id": u.id, "audio": _mono_int16(samples_FxC, rate, sample_rate or rate),
           "sample_rate": sample_rate or rate, "text": u.text, "speaker": u.speaker,
           "speaker_id": speaker_ids[u.speaker], "language": u.language}


def _mono_int16(samples_FxC: np.ndarray, rate: int, out_rate: int) -> np.ndarray:
  if samples_FxC.shape[1] == 1:
    wav_S = samples_FxC[:, 0]
  elif samples_FxC.dtype == np.int16:
    wav_S = np.round(samples_FxC.mean(axis=1)).astype(np.int16)
  else:
    wav_S = samples_FxC.mean(axis=1)
  wav_S = resample(wav_S, rate, out_rate)
  return wav_S if wav_S.dtype == np.int16 else to_int16(wav_S)
