"""Scanners that list the utterances of a speech corpus on disk, one per directory layout.

A scanner reads transcripts and file listings only (never audio) and yields, in a deterministic
order, an `Utterance` per usable entry and a `Skipped` (reason, where) per unusable one. `where`
is a path relative to the corpus root, with `:line` for a line of a metadata file. Text that is not
valid UTF-8 is skipped rather than repaired: a replacement character in a transcript silently
teaches a model a wrong target.
"""

from collections.abc import Iterator
import collections
import dataclasses
import json
import os


class BuildError(ValueError):
  """A corpus cannot be built at all (missing directory or metadata, no usable examples)."""


@dataclasses.dataclass(frozen=True)
class Utterance:
  id: str
  audio: str     # path of the audio file
  text: str
  speaker: str
  language: str
  split: str     # "train", "validation" or "test"


@dataclasses.dataclass(frozen=True)
class Skipped:
  reason: str
  where: str


Scan = Iterator[Utterance | Skipped]

# Leading word of a LibriTTS subset directory (train-clean-100, dev-other) or manifest "split" value.
_SPLITS = {"train": "train", "dev": "validation", "valid": "validation", "validation": "validation",
           "test": "test"}


def split_of(name: str) -> str | None:
  """"train-clean-100" → "train", "dev-other" → "validation", "test" → "test"; None otherwise."""
  return _SPLITS.get(name.lower().split("-")[0])


def scan_ljspeech(root: str) -> Scan:
  """`metadata.csv` (`id|text|normalized text`, no quoting) + `wavs/<id>.wav`; one speaker."""
  metadata = os.path.join(root, "metadata.csv")
  if not os.path.isfile(metadata):
    raise BuildError(f"{metadata} does not exist; an LJSpeech directory holds metadata.csv and wavs/")
  wavs = _wavs(os.path.join(root, "wavs"))
  listed = set()
  for where, line in _lines(metadata, root):
    fields = line.split(b"|")
    uid = (_decode(fields[0]) or "").strip()
    if len(fields) not in (2, 3) or not uid:
      yield Skipped("malformed_line", where)
      continue
    listed.add(uid)
    texts = [_decode(field) for field in reversed(fields[1:])]
    if None in texts:
      yield Skipped("non_utf8_text", where)
    elif not any(text.strip() for text in texts):
      yield Skipped("empty_transcript", where)
    elif uid not in wavs:
      yield Skipped("missing_audio", where)
    else:
      text = next(text.strip() for text in texts if text.strip())
      yield Utterance(uid, wavs[uid], text, "ljspeech", "en-us", "train")
  for uid in sorted(wavs.keys() - listed):
    yield Skipped("missing_transcript", os.path.relpath(wavs[uid], root))


def _wavs(folder: str) -> dict[str, str]:
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return {name[:-4]: os.path.join(folder, name) for name in names if name.endswith(".wav")}


def scan_libritts(root: str) -> Scan:
  """`[subset/]<speaker>/<chapter>/<utt>.wav` + `<utt>.normalized.txt` (or `.original.txt`).

  Every directory below `root` is searched; symlinked files are read, symlinked directories are not
  entered (they could leave the corpus or loop back into it). The split comes from the nearest
  directory above the speaker that is named like a LibriTTS subset (train-*, dev-*, test-*), else
  it is train. Audio with no speaker and chapter directory above it, or whose speaker or chapter
  directory is named like a subset (`train-clean-100/x.wav`, `train-clean-100/19/x.wav`), is
  outside the layout. An empty `.normalized.txt` is an empty transcript; `.original.txt` only
  stands in for a missing one.
  """
  for (folder, stem), files in sorted(_utterance_files(root).items()):
    rel = os.path.relpath(folder, root).split(os.sep)
    text_file = files.get(".normalized.txt") or files.get(".original.txt")
    where = os.path.relpath(files.get(".wav") or text_file, root)
    if ".wav" not in files:
      yield Skipped("missing_audio", where)
    elif not _in_layout(rel):
      yield Skipped("outside_layout", where)
    elif text_file is None:
      yield Skipped("missing_transcript", where)
    else:
      text = _read_text(text_file)
      if text is None:
        yield Skipped("non_utf8_text", where)
      elif not text:
        yield Skipped("empty_transcript", where)
      else:
        split = next(filter(None, map(split_of, reversed(rel[:-2]))), "train")
        yield Utterance(stem, files[".wav"], text, rel[-2], "en-us", split)


def _in_layout(rel: list[str]) -> bool:
  """Whether a folder (its parts below the root) is a <speaker>/<chapter> folder."""
  return len(rel) >= 2 and split_of(rel[-2]) is None and split_of(rel[-1]) is None


def _utterance_files(root: str) -> dict[tuple[str, str], dict[str, str]]:
  """{(folder, utterance stem): {".wav" | ".normalized.txt" | ".original.txt": path}}."""
  found = collections.defaultdict(dict)
  for folder, _, names in os.walk(root):
    for name in names:
      for suffix in (".wav", ".normalized.txt", ".original.txt"):
        if name.endswith(suffix):
          found[folder, name[:-len(suffix)]][suffix] = os.path.join(folder, name)
  return found


def _read_text(path: str) -> str | None:
  with open(path, "rb") as f:
    text = _decode(f.read())
  return None if text is None else text.strip()


def scan_manifest(path: str) -> Scan:
  """JSON lines `{"audio": path, "text": str, "speaker"?, "language"?, "split"?, "id"?}`.

  `path` is the manifest or a directory holding `manifest.jsonl`; relative audio paths resolve
  against the manifest's directory. Without "speaker" the speaker is "unknown", without "language"
  the language is "und" (BCP-47 for undetermined), without "id" the id is the audio path minus its
  extension, and without "split" the utterance is train.
  """
  manifest = path if os.path.isfile(path) else os.path.join(path, "manifest.jsonl")
  if not os.path.isfile(manifest):
    raise BuildError(f"{manifest} does not exist; give a JSON-lines manifest or a directory holding manifest.jsonl")
  root = os.path.dirname(manifest)
  for where, line in _lines(manifest, root):
    text = _decode(line)
    if text is None:
      yield Skipped("non_utf8_text", where)
    else:
      yield _manifest_entry(text, root, where)


def _manifest_entry(line: str, root: str, where: str) -> Utterance | Skipped:
  try:
    entry = json.loads(line)
  except ValueError:
    return Skipped("malformed_line", where)
  if not isinstance(entry, dict):
    return Skipped("malformed_line", where)
  audio, text, uid = entry.get("audio"), entry.get("text"), entry.get("id")
  speaker, language = entry.get("speaker", "unknown"), entry.get("language", "und")
  split = split_of(str(entry.get("split", "train")))
  if isinstance(speaker, int) and not isinstance(speaker, bool):
    speaker = str(speaker)
  if not (_nonempty_str(audio) and isinstance(text, str | None) and _nonempty_str(speaker)
          and _nonempty_str(language) and (uid is None or _nonempty_str(uid)) and split is not None):
    return Skipped("malformed_line", where)
  if text is None:
    return Skipped("missing_transcript", where)
  if not text.strip():
    return Skipped("empty_transcript", where)
  file = os.path.join(root, audio)
  if not os.path.isfile(file):
    return Skipped("missing_audio", where)
  return Utterance(uid or os.path.splitext(os.path.normpath(audio))[0], file, text.strip(), speaker, language, split)


def _nonempty_str(value) -> bool:
  return isinstance(value, str) and bool(value.strip())


def _lines(path: str, root: str) -> Iterator[tuple[str, bytes]]:
  """(where, line) for every non-blank line, without line ends or a UTF-8 byte-order mark."""
  with open(path, "rb") as f:
    data = f.read().removeprefix(b"\xef\xbb\xbf")
  rel = os.path.relpath(path, root)
  for number, line in enumerate(data.split(b"\n"), start=1):
    line = line.rstrip(b"\r")
    if line.strip():
      yield f"{rel}:{number}", line


def _decode(data: bytes) -> str | None:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return None


LAYOUTS = {"ljspeech": scan_ljspeech, "libritts": scan_libritts, "manifest": scan_manifest}
