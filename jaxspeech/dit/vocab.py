"""F5-TTS's character vocabulary: `vocab.txt`, one token a line, index = line number, " " at index 0.

F5 maps each character of a transcript to its index and an unknown character to 0 (the space). A dataset's
vocabulary is built from its train transcripts the first time it is asked for, and kept next to the dataset
(`<dataset>/vocab_char.txt`), so every run and the sampler read the same indices.
"""

import os

import numpy as np

FILENAME = "vocab_char.txt"


def read(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    tokens = [line[:-1] if line.endswith("\n") else line for line in f]
  if not tokens or tokens[0] != " ":
    raise ValueError(f"{path}: F5's vocab.txt has the space at index 0 (the unknown-character index)")
  return tokens


def write(path: str, tokens: list[str]) -> None:
  """Written to a temporary sibling and renamed, so a reader never sees half a file."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(token + "\n" for token in tokens)
  os.replace(tmp, path)


def build(transcripts) -> list[str]:
  """" " first, then every other character of `transcripts`, sorted."""
  return [" "] + sorted(set("".join(transcripts)) - {" "})


def for_dataset(data_path: str, split: str = "train") -> list[str]:
  path = os.path.join(data_path, FILENAME)
  if not os.path.exists(path):
    from jaxspeech.data import tfds_io  # pylint: disable=import-outside-toplevel
    source = tfds_io.data_source(data_path, split)
    write(path, build(source[i]["text"].decode() for i in range(len(source))))
  return read(path)


def of_config(cfg) -> list[str]:
  """`cfg.model.vocab_file`, or the vocabulary of `cfg.data.path` when that is empty."""
  return read(cfg.model.vocab_file) if cfg.model.get("vocab_file") else for_dataset(cfg.data.path)


def encode(text: str, tokens: list[str]) -> np.ndarray:
  """Character ids (int32); characters outside the vocabulary become 0, as in F5."""
  index = {token: i for i, token in enumerate(tokens)}
  return np.asarray([index.get(c, 0) for c in text], np.int32)
