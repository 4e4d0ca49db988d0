import filecmp
import os

import numpy as np

from jaxspeech.data import tfds_io
from jaxspeech.data.synth import corpus, espeak


def _files(path):
  return sorted(f for f in os.listdir(path))


def test_same_seed_same_bytes(tmp_path):
  a = corpus.synthesize(str(tmp_path / "a"), num_utterances=40, seed=3)
  b = corpus.synthesize(str(tmp_path / "b"), num_utterances=40, seed=3)
  assert _files(a) == _files(b)
  match, mismatch, errors = filecmp.cmpfiles(a, b, _files(a), shallow=False)
  assert not mismatch and not errors, mismatch


def test_other_seed_other_data(tmp_path):
  a = tfds_io.data_source(corpus.synthesize(str(tmp_path / "a"), num_utterances=40, seed=0), "train")
  b = tfds_io.data_source(corpus.synthesize(str(tmp_path / "b"), num_utterances=40, seed=1), "train")
  assert [a[i]["text"] for i in range(len(a))] != [b[i]["text"] for i in range(len(b))]


def test_splits_speakers_and_sentences(corpus_path):
  splits = {s: tfds_io.data_source(corpus_path, s) for s in ("train", "validation", "test", "test_unseen")}
  records = {s: [src[i] for i in range(len(src))] for s, src in splits.items()}
  heldout = {s.name for s in corpus.SPEAKERS if s.heldout}
  speakers = {s: {r["speaker"].decode() for r in recs} for s, recs in records.items()}
  assert speakers["test_unseen"] == heldout
  for split in ("train", "validation", "test"):
    assert not speakers[split] & heldout
  assert len(speakers["train"]) == len(corpus.SPEAKERS) - len(heldout)
  texts = {s: {r["text"] for r in recs} for s, recs in records.items()}
  for split in ("validation", "test", "test_unseen"):
    assert not texts[split] & texts["train"], f"{split} shares sentences with train"
  ids = [r["id"] for recs in records.values() for r in recs]
  assert len(ids) == len(set(ids))


def test_records_hold_real_speech(corpus_path):
  src = tfds_io.data_source(corpus_path, "train")
  for i in range(0, len(src), max(1, len(src) // 20)):
    r = src[i]
    assert r["sample_rate"] == espeak.SAMPLE_RATE
    assert r["audio"].dtype == np.int16
    seconds = len(r["audio"]) / r["sample_rate"]
    assert 0.5 < seconds <= corpus.MAX_SECONDS
    assert np.abs(r["audio"]).max() > 3000, "silent utterance"
    assert r["text"] and r["language"].startswith(b"en")
    assert corpus.SPEAKERS[r["speaker_id"]].name == r["speaker"].decode()


def test_voices_differ():
  a = espeak.synthesize("The river is quiet tonight.", "en-us+f3")
  c = espeak.synthesize("The river is quiet tonight.", "en-gb-scotland+m5")
  assert len(a) != len(c) or not np.array_equal(a, c)


def test_bad_voice_is_named():
  import pytest
  with pytest.raises(ValueError, match="no-such-voice"):
    espeak.synthesize("hello", "no-such-voice")


def test_data_info_reports_examples_and_size_on_disk(corpus_path, capsys):
  from jaxspeech import cli
  assert cli.main(["data", "info", corpus_path]) == 0
  lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
  meta = tfds_io.load(corpus_path).info.splits
  for split in ("train", "validation", "test", "test_unseen"):
    on_disk = sum(os.path.getsize(os.path.join(corpus_path, f)) for f in os.listdir(corpus_path)
                  if f"-{split}.array_record-" in f)
    assert int(lines[split][1]) == meta[split].num_examples
    assert float(lines[split][3]) == round(on_disk / 2**20, 1)
  assert lines["speakers:"][1] == "16"
