import filecmp
import json
import os
import re

import numpy as np
import pytest
import soundfile as sf

from jaxspeech.audio.io import resample, to_int16
from jaxspeech.data import builders, tfds_io

RATE = 16_000


def _noise(seconds, rate=RATE, channels=1, seed=0):
  shape = (int(seconds * rate), channels) if channels > 1 else (int(seconds * rate),)
  return np.random.default_rng(seed).integers(-8000, 8000, shape, dtype=np.int16)


def _write(path, samples, rate=RATE, subtype=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(path, samples, rate, subtype=subtype)


def _wav_bytes(tmp_path, samples, rate=RATE):
  scratch = os.path.join(tmp_path, "scratch.wav")
  sf.write(scratch, samples, rate, subtype="PCM_16")
  with open(scratch, "rb") as f:
    data = f.read()
  os.remove(scratch)
  return data


def _write_bytes(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _examples(path):
  """{id: example} over every split, and {split: [ids]}."""
  splits = {split: tfds_io.data_source(path, split) for split in tfds_io.load(path).info.splits}
  examples, ids = {}, {}
  for split, source in splits.items():
    records = [source[i] for i in range(len(source))]
    ids[split] = [r["id"].decode() for r in records]
    examples.update({r["id"].decode(): r for r in records})
  return examples, ids


def _assert_example(example, audio, text, speaker, speaker_id, rate, language):
  np.testing.assert_array_equal(example["audio"], audio)  # exact: int16 samples
  assert example["text"].decode() == text
  assert example["speaker"].decode() == speaker
  assert example["speaker_id"] == speaker_id
  assert example["sample_rate"] == rate
  assert example["language"].decode() == language


def _ljspeech(root):
  """An LJSpeech folder with every bad-input case; returns {id: (audio at 16 kHz, text)} of the valid ones."""
  wavs = os.path.join(root, "wavs")
  rows, valid = [], {}

  def clip(uid, samples, text, raw=None, rate=RATE, subtype=None):
    _write(os.path.join(wavs, f"{uid}.wav"), samples, rate, subtype)
    rows.append(f"{uid}|{raw or text}|{text}".encode())

  one, two, stereo = _noise(0.25, seed=1), _noise(0.25, seed=2), _noise(0.25, channels=2, seed=3)
  floats = np.random.default_rng(4).uniform(-0.5, 0.5, 4000).astype(np.float32)
  deep, slow = _noise(0.25, seed=5), _noise(0.5, rate=22050, seed=6)
  clip("LJ001-0001", one, "Normalized one.", raw="Raw one.")
  valid["LJ001-0001"] = (one, "Normalized one.")
  clip("LJ001-0002", two, "", raw="Raw two.")  # no normalized text: the raw text stands in
  valid["LJ001-0002"] = (two, "Raw two.")
  clip("LJ001-0003", stereo, "Stereo.")
  valid["LJ001-0003"] = (np.round((stereo[:, 0].astype(np.int32) + stereo[:, 1]) / 2).astype(np.int16), "Stereo.")
  clip("LJ001-0004", floats, "Float.", subtype="FLOAT")
  valid["LJ001-0004"] = (to_int16(floats), "Float.")
  clip("LJ001-0005", deep, "Twenty-four bit.", subtype="PCM_24")
  valid["LJ001-0005"] = (deep, "Twenty-four bit.")
  clip("LJ001-0006", slow, "Resampled.", rate=22050)
  valid["LJ001-0006"] = (resample(slow, 22050, RATE), "Resampled.")

  streamed = bytearray(_wav_bytes(root, one))
  streamed[4:8] = streamed[40:44] = b"\xff" * 4  # RIFF and data sizes of a WAV written to a pipe
  _write_bytes(os.path.join(wavs, "LJ001-0007.wav"), bytes(streamed))
  rows.append(b"LJ001-0007|Streamed.|Streamed.")
  valid["LJ001-0007"] = (one, "Streamed.")

  nan, inf = floats.copy(), floats.copy()
  nan[7], inf[9] = np.nan, -np.inf
  clip("LJ002-0001", nan, "NaN.", subtype="FLOAT")
  clip("LJ002-0002", inf, "Inf.", subtype="FLOAT")
  whole = _wav_bytes(root, _noise(0.25, seed=7))
  for uid, data in (("LJ002-0003", b"not audio at all " * 40), ("LJ002-0004", b""), ("LJ002-0005", whole[:20]),
                    ("LJ002-0006", whole[:len(whole) // 2])):
    _write_bytes(os.path.join(wavs, f"{uid}.wav"), data)
    rows.append(f"{uid}|Bad audio.|Bad audio.".encode())
  clip("LJ002-0007", np.zeros(0, np.int16), "No samples.")
  clip("LJ002-0008", _noise(1.5), "Too long.")
  clip("LJ002-0009", one, "")
  clip("LJ002-0010", one, "  ", raw=" ")
  _write(os.path.join(wavs, "LJ002-0011.wav"), one)
  rows.append(b"LJ002-0011|caf\xe9|caf\xe9")
  rows.append(b"LJ002-0012|No audio.|No audio.")
  _write(os.path.join(wavs, "LJ002-0013.wav"), one)  # in no row
  rows += [b"a line without fields", b"LJ002-0014|too|many|fields", b"LJ001-0001|Again.|Again."]
  with open(os.path.join(root, "metadata.csv"), "wb") as f:
    f.write(b"\xef\xbb\xbf" + b"\r\n".join(rows) + b"\r\n\r\n")
  return valid


LJSPEECH_SKIPPED = {"duplicate_id": 1, "empty_audio": 1, "empty_transcript": 2, "malformed_line": 2,
                    "missing_audio": 1, "missing_transcript": 1, "non_finite_audio": 2, "non_utf8_text": 1,
                    "too_long": 1, "truncated_audio": 1, "unreadable_audio": 3}


def test_ljspeech_keeps_every_valid_clip_and_counts_every_bad_one(tmp_path):
  valid = _ljspeech(str(tmp_path / "LJSpeech-1.1"))
  result = builders.build("ljspeech", str(tmp_path / "LJSpeech-1.1"), str(tmp_path / "data"),
                          max_seconds=1.0, sample_rate=RATE)
  assert result.path == str(tmp_path / "data" / "ljspeech" / "1.0.0")
  report = result.report
  assert report["skipped"] == LJSPEECH_SKIPPED
  assert report["repaired"] == {"downmixed": 1, "resampled": 1}
  assert report["kept"] == len(valid) and report["total"] == len(valid) + sum(LJSPEECH_SKIPPED.values())
  assert report["skipped_where"]["unreadable_audio"] == ["wavs/LJ002-0003.wav", "wavs/LJ002-0004.wav",
                                                         "wavs/LJ002-0005.wav"]
  assert report["skipped_where"]["non_utf8_text"] == ["metadata.csv:18"]
  assert report["sample_rates"] == {str(RATE): len(valid)}

  examples, ids = _examples(result.path)
  assert sorted(examples) == sorted(valid)
  for uid, (audio, text) in valid.items():
    _assert_example(examples[uid], audio, text, "ljspeech", 0, RATE, "en-us")
  assert len(examples["LJ001-0006"]["audio"]) == 8000  # 0.5 s
  assert set(ids) == {"train", "validation"} and len(ids["validation"]) == 1
  assert report["splits"] == {"train": len(valid) - 1, "validation": 1}
  assert all(i == sorted(i) for i in ids.values())

  meta = tfds_io.metadata(result.path)
  assert meta["build_report"] == report
  assert meta["speakers"] == ["ljspeech"] and meta["sample_rate"] == RATE and meta["layout"] == "ljspeech"


def _libritts(root):
  """LibriTTS subsets (native 24 kHz, one speaker at 16 kHz) with text fallbacks and layout faults: stray audio,
  a directory symlink loop and a directory symlink out of the corpus."""
  made = {}

  def utt(subset, speaker, chapter, uid, normalized=None, original=None, rate=24_000, audio=True):
    folder = os.path.join(root, "LibriTTS", subset, speaker, chapter)
    samples = _noise(0.2, rate=rate, seed=len(made))
    if audio:
      _write(os.path.join(folder, f"{uid}.wav"), samples, rate)
    for suffix, text in ((".normalized.txt", normalized), (".original.txt", original)):
      if text is not None:
        _write_bytes(os.path.join(folder, uid + suffix), text if isinstance(text, bytes) else text.encode())
    made[uid] = (samples, rate, speaker)

  utt("train-clean-100", "19", "198", "19_198_000000_000000", "Normalized.", "ORIGINAL.")
  utt("train-clean-100", "19", "198", "19_198_000000_000001", original="Only original.")
  utt("train-other-500", "103", "1241", "103_1241_000000_000000", "Other.", rate=RATE)
  utt("dev-clean", "1034", "121119", "1034_121119_000000_000000", "Dev.")
  utt("test-clean", "2300", "131720", "2300_131720_000000_000000", "Test.")
  utt("train-clean-100", "19", "198", "19_198_000000_000002", "No audio.", audio=False)
  utt("train-clean-100", "19", "198", "19_198_000000_000003")
  utt("train-clean-100", "19", "198", "19_198_000000_000004", b"na\xefve", "naive")
  utt("train-clean-100", "19", "198", "19_198_000000_000005", "\n", "Empty normalized.")
  for folder in ("", "LibriTTS/train-clean-100", "LibriTTS/train-clean-100/19"):
    _write(os.path.join(root, folder, "stray.wav"), _noise(0.2), RATE)
    _write_bytes(os.path.join(root, folder, "stray.normalized.txt"), b"Stray.")
  chapter = os.path.join(root, "LibriTTS", "train-clean-100", "19", "198")
  os.symlink("..", os.path.join(chapter, "loop"))
  elsewhere = os.path.join(os.path.dirname(root), "elsewhere")
  _write(os.path.join(elsewhere, "19_198_000000_000009.wav"), _noise(0.2), RATE)
  _write_bytes(os.path.join(elsewhere, "19_198_000000_000009.normalized.txt"), b"Elsewhere.")
  os.symlink(elsewhere, os.path.join(root, "LibriTTS", "train-clean-100", "19", "199"))
  return made


def test_libritts_splits_by_subset_and_keeps_native_rates(tmp_path):
  made = _libritts(str(tmp_path / "corpus"))
  result = builders.build("libritts", str(tmp_path / "corpus"), str(tmp_path / "data"))
  assert result.report["skipped"] == {"empty_transcript": 1, "missing_audio": 1, "missing_transcript": 1,
                                      "non_utf8_text": 1, "outside_layout": 3}
  assert result.report["skipped_where"]["outside_layout"] == [
      "stray.wav", "LibriTTS/train-clean-100/stray.wav", "LibriTTS/train-clean-100/19/stray.wav"]
  assert result.report["repaired"] == {}
  assert result.report["sample_rates"] == {"16000": 1, "24000": 4}

  examples, ids = _examples(result.path)
  assert ids == {"train": ["103_1241_000000_000000", "19_198_000000_000000", "19_198_000000_000001"],
                 "validation": ["1034_121119_000000_000000"], "test": ["2300_131720_000000_000000"]}
  speakers = ["103", "1034", "19", "2300"]  # sorted by name
  texts = {"19_198_000000_000000": "Normalized.", "19_198_000000_000001": "Only original.",
           "103_1241_000000_000000": "Other.", "1034_121119_000000_000000": "Dev.",
           "2300_131720_000000_000000": "Test."}
  for uid, text in texts.items():
    samples, rate, speaker = made[uid]
    _assert_example(examples[uid], samples, text, speaker, speakers.index(speaker), rate, "en-us")
  meta = tfds_io.metadata(result.path)
  assert meta["speakers"] == speakers and meta["sample_rate"] is None


def _manifest(root, elsewhere):
  """A manifest mixing valid lines (relative, absolute, FLAC, 8 kHz) with malformed ones."""
  a, b, c, g = _noise(0.5, rate=8000, seed=1), _noise(0.25, seed=2), _noise(0.25, seed=3), _noise(0.25, seed=4)
  _write(os.path.join(root, "clips", "a.wav"), a, 8000)
  _write(os.path.join(root, "clips", "b.flac"), b)
  _write(os.path.join(elsewhere, "c.wav"), c)
  _write(os.path.join(root, "clips", "e.wav"), c)
  _write(os.path.join(root, "clips", "g.wav"), g)
  lines = [json.dumps(line).encode() for line in (
      {"audio": "clips/a.wav", "text": " Alpha. ", "speaker": "amy", "language": "en-us"},
      {"audio": "clips/b.flac", "text": "Beta.", "speaker": "bob", "language": "de", "split": "test"},
      {"audio": os.path.join(elsewhere, "c.wav"), "text": "Gamma.", "speaker": 7},
      {"audio": "clips/g.wav", "text": "Gee.", "speaker": "amy", "id": "custom-id", "split": "dev-clean"},
      ["a", "list"],
      {"text": "No audio key."},
      {"audio": "clips/e.wav", "text": 5},
      {"audio": "clips/e.wav", "text": "Held out?", "split": "holdout"},
      {"audio": "clips/e.wav", "speaker": "amy"},
      {"audio": "clips/e.wav", "text": ""},
      {"audio": "clips/missing.wav", "text": "Missing."},
      {"audio": "clips/a.wav", "text": "Alpha again."},
  )]
  lines += [b"{not json", b'{"audio": "clips/e.wav", "text": "caf\xe9"}', b"   "]
  _write_bytes(os.path.join(root, "manifest.jsonl"), b"\n".join(lines))
  return {"clips/a": (resample(a, 8000, RATE), "Alpha.", "amy", "en-us"),
          "clips/b": (b, "Beta.", "bob", "de"),
          os.path.join(elsewhere, "c"): (c, "Gamma.", "7", "und"),
          "custom-id": (g, "Gee.", "amy", "und")}


def test_manifest_resolves_paths_and_counts_malformed_lines(tmp_path):
  valid = _manifest(str(tmp_path / "corpus"), str(tmp_path / "elsewhere"))
  result = builders.build("manifest", str(tmp_path / "corpus"), str(tmp_path / "data"), sample_rate=RATE)
  assert result.report["skipped"] == {"duplicate_id": 1, "empty_transcript": 1, "malformed_line": 5,
                                      "missing_audio": 1, "missing_transcript": 1, "non_utf8_text": 1}
  assert result.report["repaired"] == {"resampled": 1}
  examples, ids = _examples(result.path)
  assert ids == {"train": sorted(["clips/a", os.path.join(str(tmp_path / "elsewhere"), "c")]),
                 "validation": ["custom-id"], "test": ["clips/b"]}
  speakers = ["7", "amy", "bob"]
  for uid, (audio, text, speaker, language) in valid.items():
    _assert_example(examples[uid], audio, text, speaker, speakers.index(speaker), RATE, language)
  assert len(examples["clips/a"]["audio"]) == 8000  # 0.5 s at 16 kHz


def _tree(path):
  return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files)


def test_build_is_deterministic(tmp_path):
  _manifest(str(tmp_path / "corpus"), str(tmp_path / "elsewhere"))
  a = builders.build("manifest", str(tmp_path / "corpus"), str(tmp_path / "a")).path
  b = builders.build("manifest", str(tmp_path / "corpus" / "manifest.jsonl"), str(tmp_path / "b")).path
  assert _tree(a) == _tree(b)
  _, mismatch, errors = filecmp.cmpfiles(a, b, _tree(a), shallow=False)
  assert not mismatch and not errors, mismatch


def test_validation_is_held_out_by_id_hash(tmp_path):
  root = tmp_path / "corpus"
  lines = []
  for i in range(200):
    _write(str(root / f"{i:03d}.wav"), _noise(0.01, seed=i))
    lines.append(json.dumps({"audio": f"{i:03d}.wav", "text": f"Clip {i}."}))
  (root / "manifest.jsonl").write_text("\n".join(lines))
  splits = builders.build("manifest", str(root), str(tmp_path / "data"), validation_fraction=0.1).report["splits"]
  assert splits["train"] + splits["validation"] == 200 and 8 <= splits["validation"] <= 35


def test_missing_manual_dir_names_the_path(tmp_path):
  with pytest.raises(builders.BuildError, match=re.escape(str(tmp_path / "nowhere"))):
    builders.build("ljspeech", str(tmp_path / "nowhere"), str(tmp_path / "data"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(builders.BuildError, match=re.escape(str(tmp_path / "empty" / "metadata.csv"))):
    builders.build("ljspeech", str(tmp_path / "empty"), str(tmp_path / "data"))
  with pytest.raises(builders.BuildError, match="unknown dataset 'vctk'"):
    builders.build("vctk", str(tmp_path / "empty"), str(tmp_path / "data"))


def test_no_usable_examples_names_the_path_and_writes_nothing(tmp_path):
  root = tmp_path / "LJSpeech"
  _write_bytes(str(root / "wavs" / "LJ001-0001.wav"), b"junk")
  (root / "metadata.csv").write_text("LJ001-0001|Junk.|Junk.\nLJ001-0002||\n")
  with pytest.raises(builders.BuildError, match=re.escape(f"no usable examples in {root}")) as error:
    builders.build("ljspeech", str(root), str(tmp_path / "data"))
  assert "unreadable_audio" in str(error.value) and "empty_transcript" in str(error.value)
  assert not (tmp_path / "data").exists()
