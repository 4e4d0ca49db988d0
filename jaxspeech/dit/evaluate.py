"""Zero-shot synthesis of a dataset split's sentences, scored against their recordings (`jaxspeech.audio.quality`).

Each utterance is spoken by the DiT prompted with another utterance of the same speaker from the same split
(the next one in the split, cyclically), as a user clones a voice from one clip: on `test_unseen` neither the
voice nor the sentences were trained on. `vocoder_rows` vocodes each recording's own mel instead: what any mel
model decoded by that vocoder can reach.
"""

import time
import os

import numpy as np
import jax
import soundfile

from jaxspeech.audio import quality
from jaxspeech.dit.family import SAMPLE_RATE
from jaxspeech.audio import io as audio_io
from jaxspeech.data import tfds_io
from jaxspeech.dit import speak
from jaxspeech.audio import features
from jaxspeech.dit.family import HOP

METRICS = ("mcd_dtw", "duration_ratio", "rtf")


def recordings(data_path: str, split: str, count: int) -> tuple[list[dict], list[dict]]:
  """(the first `count` utterances of `split`, all of them): index, text, speaker and 24 kHz float audio."""
  source = tfds_io.data_source(data_path, split)
  out = []
  for i in range(len(source)):
    record = source[i]
    out.append({"index": i, "speaker": record["speaker"].decode(), "text": record["text"].decode(),
                "wav": audio_io.resample(audio_io.to_float(record["audio"]), int(record["sample_rate"]),
                                         SAMPLE_RATE)})
  return out[:count], out


def prompt_for(utterance: dict, split: list[dict]) -> dict:
  """The next utterance of the same speaker in the split, cyclically (the utterance itself if it is the only one)."""
  same = [u for u in split if u["speaker"] == utterance["speaker"]]
  return same[(same.index(utterance) + 1) % len(same)]


def score(truth_S: np.ndarray, wav_S: np.ndarray, wall: float) -> dict[str, float]:
  return {**quality.score(truth_S, wav_S, SAMPLE_RATE), "wall_seconds": wall}


def synthesis_rows(model, tokens: list[str], data_path: str, split: str, key, *, count: int, vocoder=None,
                   sampling=None, wav_dir: str | None = None) -> list[dict]:
  """One scored row per utterance; `rtf` (wall / generated seconds) is taken from a second, compiled run of the
  same sentence, since every new length compiles the sampler anew."""
  chosen, everything = recordings(data_path, split, count)
  rows = []
  for u in chosen:
    prompt = prompt_for(u, everything)

    def run():
      start = time.perf_counter()
      wav_S, _, _ = speak.speak(model, tokens, prompt["wav"], SAMPLE_RATE, prompt["text"], u["text"],
                                jax.random.fold_in(key, u["index"]), vocoder=vocoder,
                                sampling=sampling or speak.Sampling())
      return wav_S, time.perf_counter() - start

    wav_S, first_wall = run()
    _, wall = run()
    row = {"index": u["index"], "speaker": u["speaker"], "prompt": prompt["index"], "text": u["text"],
           "first_wall_seconds": first_wall, **score(u["wav"], wav_S, wall)}
    row["rtf"] = wall / max(row["seconds"], 1e-9)
    write(wav_dir, split, u["index"], wav_S)
    rows.append(row)
  return rows


def vocoder_rows(vocoder: str | None, data_path: str, split: str, *, count: int,
                 wav_dir: str | None = None) -> list[dict]:
  """One scored row per utterance of its own log-mel vocoded (Griffin-Lim without a vocoder)."""
  rows = []
  for u in recordings(data_path, split, count)[0]:
    start = time.perf_counter()
    mel_TxM = features.log_mel(u["wav"], SAMPLE_RATE, hop_length=HOP, n_mels=100)
    wav_S = speak.vocode(vocoder, mel_TxM)
    rows.append({"index": u["index"], "speaker": u["speaker"], "text": u["text"],
                 **score(u["wav"], wav_S, time.perf_counter() - start)})
    write(wav_dir, split, u["index"], wav_S)
  return rows


def write(wav_dir: str | None, split: str, index: int, wav_S: np.ndarray) -> None:
  if wav_dir:
    os.makedirs(wav_dir, exist_ok=True)
    soundfile.write(os.path.join(wav_dir, f"{split}_{index:03d}.wav"), np.clip(wav_S, -1, 1), SAMPLE_RATE)


def means(rows: list[dict]) -> dict[str, float]:
  return quality.means(rows, METRICS)


def table(rows: list[dict], means_: dict[str, float]) -> str:
  return quality.table(rows, means_, (("mcd_dtw", "MCD dB", 7), ("duration_ratio", "dur", 5), ("wer", "WER", 5),
                                      ("cer", "CER", 5), ("rtf", "RTF", 6)))
