"""The embedded default corpus: multi-speaker English speech synthesised offline with espeak-ng.

Splits: `train`, `validation` and `test` share the seen speakers; every split has its own
sentences, so evaluation text is never trained on. `test_unseen` uses held-out speakers that no
other split contains, for zero-shot tests.
"""

import collections
from concurrent import futures
import dataclasses
import multiprocessing
import os
import random

import numpy as np

from jaxspeech.data import schema, tfds_io
from jaxspeech.data.synth import espeak, sentences

NAME = "synth_speech"
VERSION = "1.0.0"
DEFAULT_NUM_UTTERANCES = 1200
MAX_SECONDS = 10.0
CHUNK = 48  # utterances per synthesis process
SPLIT_FRACTIONS = {"validation": 0.06, "test": 0.06, "test_unseen": 0.08}


@dataclasses.dataclass(frozen=True)
class Speaker:
  name: str
  voice: str       # espeak-ng voice+variant
  language: str
  rate: int        # words per minute
  pitch: int       # 0-100
  heldout: bool = False


# Variants with "breath" (f2, f3, f5, ...) add noise that differs run to run; none is used here.
SPEAKERS = (
    Speaker("us_m1", "en-us+m1", "en-us", 165, 45),
    Speaker("us_f1", "en-us+f1", "en-us", 170, 60),
    Speaker("us_m3", "en-us+m3", "en-us", 185, 40),
    Speaker("us_f3", "en-us+Annie", "en-us", 160, 65),
    Speaker("gb_m2", "en+m2", "en-gb", 175, 50),
    Speaker("gb_f2", "en+belinda", "en-gb", 165, 70),
    Speaker("rp_m4", "en-gb-x-rp+m4", "en-gb", 155, 35),
    Speaker("rp_f4", "en-gb-x-rp+f4", "en-gb", 180, 55),
    Speaker("sc_m5", "en-gb-scotland+m5", "en-gb", 170, 50),
    Speaker("sc_f5", "en-gb-scotland+linda", "en-gb", 160, 60),
    Speaker("ca_m6", "en-029+m6", "en-029", 175, 45),
    Speaker("ny_f4", "en-us-nyc+f4", "en-us", 190, 60),
    Speaker("us_m7", "en-us+m7", "en-us", 170, 30, heldout=True),
    Speaker("gb_f5", "en+aunty", "en-gb", 175, 75, heldout=True),
    Speaker("sc_m2", "en-gb-scotland+m2", "en-gb", 185, 45, heldout=True),
    Speaker("ca_f1", "en-029+f1", "en-029", 165, 65, heldout=True),
)


def split_sizes(num_utterances: int) -> dict[str, int]:
  sizes = {s: max(1, round(f * num_utterances)) for s, f in SPLIT_FRACTIONS.items()}
  sizes = {"train": num_utterances - sum(sizes.values()), **sizes}
  if sizes["train"] < 1:
    raise ValueError(f"--num-utterances {num_utterances} is too small: need at least {len(sizes)} utterances")
  return sizes


def _candidates(split: str, texts: list[str], rng: random.Random) -> list[tuple[str, int, int]]:
  """(text, speaker index, rate) for each sentence; speakers cycle first so every one appears."""
  speakers = [i for i, s in enumerate(SPEAKERS) if s.heldout == (split == "test_unseen")]
  out = []
  for k, text in enumerate(texts):
    sid = speakers[k % len(speakers)] if k < len(speakers) else rng.choice(speakers)
    out.append((text, sid, SPEAKERS[sid].rate + rng.randint(-10, 10)))
  return out


def _speak_chunk(chunk: list[tuple[str, int, int]]) -> list[np.ndarray]:
  return [espeak.synthesize(text, SPEAKERS[sid].voice, rate=rate, pitch=SPEAKERS[sid].pitch)
          for text, sid, rate in chunk]


def _map_ahead(pool: futures.Executor, fn, items, ahead: int = 4):
  """`map` in order, with at most `ahead` items in flight, so stopping early wastes little."""
  pending = collections.deque()
  for item in items:
    pending.append(pool.submit(fn, item))
    if len(pending) > ahead:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


def _utterances(split: str, count: int, candidates, pool: futures.Executor):
  chunks = [candidates[i:i + CHUNK] for i in range(0, len(candidates), CHUNK)]
  made = 0
  for chunk, wavs in zip(chunks, _map_ahead(pool, _speak_chunk, chunks)):
    for (text, sid, _), wav in zip(chunk, wavs):
      if made == count:
        return
      if len(wav) > MAX_SECONDS * espeak.SAMPLE_RATE:
        continue  # spoken too long for this voice; the next sentence takes its place
      spk = SPEAKERS[sid]
      yield {"id": f"{split}-{made:06d}", "audio": wav, "sample_rate": espeak.SAMPLE_RATE, "text": text,
             "speaker": spk.name, "speaker_id": sid, "language": spk.language}
      made += 1
  if made < count:
    raise RuntimeError(f"ran out of sentences for split {split!r}")


def synthesize(data_dir: str, num_utterances: int = DEFAULT_NUM_UTTERANCES, seed: int = 0,
               workers: int = 2) -> str:
  """Builds the corpus at `{data_dir}/synth_speech/1.0.0`; the same (num_utterances, seed) gives the same bytes."""
  sizes = split_sizes(num_utterances)
  # Spare sentences stand in for those spoken longer than MAX_SECONDS.
  shares = {split: int(count * 1.5) + 20 for split, count in sizes.items()}
  texts_all, start, splits = sentences.unique_sentences(sum(shares.values()), seed), 0, {}
  # espeak-ng carries state from one utterance to the next within a process (its intonation
  # jitter tables), so each chunk is spoken by a fresh process: output depends only on the chunk.
  pool = futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)
  for split, count in sizes.items():
    texts = texts_all[start:start + shares[split]]
    start += shares[split]
    splits[split] = _utterances(split, count, _candidates(split, texts, random.Random(f"{seed}-{split}")), pool)
  meta = {
      "corpus": NAME, "seed": seed, "num_utterances": num_utterances, "split_sizes": sizes,
      "sample_rate": espeak.SAMPLE_RATE,
      "speakers": [dataclasses.asdict(s) for s in SPEAKERS],
  }
  path = os.path.join(data_dir, NAME, VERSION)
  with pool:
    return tfds_io.write_dataset(path, schema.SPEECH_FEATURES, splits, metadata=meta,
                                 description="Multi-speaker English speech synthesised offline with espeak-ng.")


def default_path(data_dir: str) -> str:
  return os.path.join(data_dir, NAME, VERSION)
