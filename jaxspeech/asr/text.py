"""Transcripts as CTC targets: the characters of a fixed alphabet, or the pieces of a sentencepiece model
(`jaxspeech text train`); the blank is the class after the last piece, as in ParakeetForCTC. A workdir imported
from an HF ParakeetForCTC directory decodes with that directory's `tokenizer.json` (`HFTokenizer`)."""

import copy
import json
import re

import numpy as np

from jaxspeech import storage
from jaxspeech.text import spm

ALPHABET = " abcdefghijklmnopqrstuvwxyz'"


def normalize(text: str) -> str:
  """Lower case, letters and apostrophes only, single spaces: what WER and CER compare."""
  return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


class Characters:
  """`ALPHABET`'s characters as pieces 0..27."""
  vocab_size = len(ALPHABET)

  def encode(self, text: str) -> list[int]:
    return [ALPHABET.index(c) for c in normalize(text)]

  def decode(self, ids) -> str:
    return "".join(ALPHABET[i] for i in ids)


def tokenizer(path: str) -> Characters | spm.Tokenizer:
  """Characters for "", else the sentencepiece model at `path`."""
  return spm.Tokenizer.load(path) if path else Characters()


class HFTokenizer:
  """The HF tokenizer files in `directory`: tokenizer.json, and the special tokens that tokenizer_config.json
  (over special_tokens_map.json) names. `decode` of collapsed CTC ids is `ParakeetTokenizer.decode` of the
  frames' ids, as `ParakeetProcessor.decode` and the ASR pipeline call it: the tokenizer's decoder over the
  ids, special tokens kept. That also drops the pad token, which `collapse` does when the pad is the blank,
  and cleans up spaces where `cleans_up`, which `decode` does not: the importer refuses both differences."""

  def __init__(self, directory: str):
    import tokenizers  # pylint: disable=import-outside-toplevel
    self.tokenizer = tokenizers.Tokenizer.from_str(storage.read_text(storage.join(directory, HF_FILES[0])))
    self.config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
      path = storage.join(directory, name)
      self.config.update(json.loads(storage.read_text(path)) if storage.exists(path) else {})

  @property
  def pad_id(self) -> int | None:
    pad = self.config.get("pad_token")
    return self.tokenizer.token_to_id(pad["content"] if isinstance(pad, dict) else pad) if pad else None

  @property
  def cleans_up(self) -> bool:
    """Whether transformers' decode rewrites spaces before punctuation (it never does for a BPE model)."""
    return bool(self.config.get("clean_up_tokenization_spaces")) and type(self.tokenizer.model).__name__ != "BPE"

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


FILENAME = "tokenizer.model"  # a run's sentencepiece model, kept in its workdir
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")  # an HF tokenizer's, if present


def in_workdir(workdir: str) -> str:
  return storage.join(workdir, FILENAME)


def of_workdir(workdir: str) -> Characters | spm.Tokenizer | HFTokenizer:
  """The tokenizer a workdir's model was trained with: its own copy of the sentencepiece model, else the HF
  tokenizer `jaxspeech convert asr --from hf` copied into it, else characters."""
  if storage.exists(in_workdir(workdir)):
    return tokenizer(in_workdir(workdir))
  return HFTokenizer(workdir) if storage.exists(storage.join(workdir, HF_FILES[0])) else Characters()


def prepare(cfg, workdir: str):
  """The config a run in `workdir` uses: `data.tokenizer` copied into the workdir on the first run and pointing
  there, so the workdir alone transcribes (no workdir, or characters: the config as given). A resumed run given
  another tokenizer is refused."""
  if not workdir or not cfg.data.tokenizer:
    return cfg
  path = in_workdir(workdir)
  if not storage.exists(path):
    storage.makedirs(workdir)
    storage.write_bytes(path, storage.read_bytes(cfg.data.tokenizer))
  elif storage.read_bytes(cfg.data.tokenizer) != storage.read_bytes(path):
    raise ValueError(f"data.tokenizer={cfg.data.tokenizer} differs from the tokenizer this workdir was trained "
                     f"with ({path}); use a new --workdir")
  cfg = copy.deepcopy(cfg)
  with cfg.unlocked():
    cfg.data.tokenizer = path
  return cfg


def collapse(best_N: np.ndarray, blank: int) -> list[int]:
  """CTC's collapse of per-frame best classes: repeats merged, then blanks dropped."""
  best_N = np.asarray(best_N)
  keep = np.ones(len(best_N), bool)
  keep[1:] = best_N[1:] != best_N[:-1]
  return [int(i) for i in best_N[keep & (best_N != blank)]]


def greedy(logits_BxNxV: np.ndarray, valid_BxN: np.ndarray, blank: int) -> list[list[int]]:
  """Greedy CTC decoding: the best class per valid frame, collapsed, per row."""
  best_BxN = np.asarray(logits_BxNxV).argmax(-1)
  return [collapse(best_N[valid_N], blank) for best_N, valid_N in zip(best_BxN, np.asarray(valid_BxN))]
