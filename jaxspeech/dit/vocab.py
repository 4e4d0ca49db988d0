"""F5-TTS's character vocabulary: `vocab.txt`, one token a line, index = line number, " " at index 0.

F5 maps each character of a transcript to its index and an unknown character to 0 (the space). A run keeps its
vocabulary in its workdir (`<workdir>/vocab_char.txt`, written by `prepare` before training starts: a copy of
`model.vocab_file`, or built from the dataset's train transcripts), so a resumed run and the sampler read the
indices the model was trained with, and the dataset directory is only read.
"""

import copy

import numpy as np

from jaxspeech import storage
from jaxspeech.data import tfds_io

FILENAME = "vocab_char.txt"


def read(path: str) -> list[str]:
  text = storage.read_bytes(path).decode("utf-8")
  tokens = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
  if not tokens or tokens[0] != " ":
    raise ValueError(f"{path}: F5's vocab.txt has the space at index 0 (the unknown-character index)")
  return tokens


def write(path: str, tokens: list[str]) -> None:
  """Whole or not at all (`storage.write_text`): a reader never sees half a file."""
  storage.write_text(path, "".join(token + "\n" for token in tokens))


def build(transcripts) -> list[str]:
  """" " first, then every other character of `transcripts`, sorted."""
  return [" "] + sorted(set("".join(transcripts)) - {" "})


def of_dataset(data_path: str, split: str = "train") -> list[str]:
  source = tfds_io.data_source(data_path, split)
  return build(source[i]["text"].decode() for i in range(len(source)))


def of_config(cfg) -> list[str]:
  """`data.vocab_file` (the workdir's copy, set by `prepare`), else `model.vocab_file`, else built from the
  train transcripts of `data.path`."""
  for path in (cfg.data.get("vocab_file"), cfg.model.get("vocab_file")):
    if path:
      return read(path)
  return of_dataset(cfg.data.path)


def in_workdir(workdir: str) -> str:
  return storage.join(workdir, FILENAME)


def of_workdir(workdir: str, config: dict) -> list[str]:
  """The vocabulary a workdir's model reads: the one its training kept there, else its `model.vocab_file` (an
  imported F5 checkpoint's vocab.txt)."""
  return read(file_of_workdir(workdir, config))


def file_of_workdir(workdir: str, config: dict) -> str:
  """The file `of_workdir` reads."""
  if storage.exists(in_workdir(workdir)):
    return in_workdir(workdir)
  if config["model"].get("vocab_file"):
    return config["model"]["vocab_file"]
  raise ValueError(f"{workdir} holds no {FILENAME} and names no model.vocab_file: import it with --vocab vocab.txt")


def prepare(cfg, workdir: str):
  """The config a run in `workdir` uses: its vocabulary copied into the workdir on the first run and
  `data.vocab_file` pointing there (no workdir, "": the config as given). A resumed run given another
  `model.vocab_file` is refused."""
  if not workdir:
    return cfg
  path = in_workdir(workdir)
  if not storage.exists(path):
    storage.makedirs(workdir)
    write(path, of_config(cfg))
  elif cfg.model.get("vocab_file") and read(cfg.model.vocab_file) != read(path):
    raise ValueError(f"model.vocab_file={cfg.model.vocab_file} differs from the vocabulary this workdir was "
                     f"trained with ({path}); use a new --workdir")
  cfg = copy.deepcopy(cfg)
  with cfg.unlocked():
    cfg.data.vocab_file = path
  return cfg


def encode(text: str, tokens: list[str]) -> np.ndarray:
  """Character ids (int32); characters outside the vocabulary become 0, as in F5."""
  index = {token: i for i, token in enumerate(tokens)}
  return np.asarray([index.get(c, 0) for c in text], np.int32)
