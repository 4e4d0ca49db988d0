"""Word and character error rates: Levenshtein distances between normalised transcripts."""

import numpy as np

from jaxspeech.asr.text import normalize


def edit_distance(hyp: list, ref: list) -> int:
  """Substitutions + deletions + insertions turning `ref` into `hyp` (Levenshtein, one row per hypothesis item;
  a row's insertion chain row[j] = min(row[j], row[j-1] + 1) is a running minimum of row[j] - j)."""
  ref_R = np.array(ref, dtype=object)
  j_R1 = np.arange(len(ref) + 1)
  row = j_R1
  for i, h in enumerate(hyp, 1):
    candidate = np.concatenate([[i], np.minimum(row[1:] + 1, row[:-1] + (ref_R != h))])
    row = np.minimum.accumulate(candidate - j_R1) + j_R1
  return int(row[-1])


def errors(hyp: str, ref: str) -> dict[str, tuple[int, int]]:
  """{"wer": (word errors, reference words), "cer": (character errors, reference characters)} of normalised
  text; a reference's characters include its spaces."""
  hyp, ref = normalize(hyp), normalize(ref)
  return {"wer": (edit_distance(hyp.split(), ref.split()), len(ref.split())),
          "cer": (edit_distance(list(hyp), list(ref)), len(ref))}


def rates(pairs) -> dict[str, float]:
  """Corpus WER and CER of (hypothesis, reference) pairs: errors summed over references' words (characters)."""
  totals = {"wer": [0, 0], "cer": [0, 0]}
  for hyp, ref in pairs:
    for name, (e, n) in errors(hyp, ref).items():
      totals[name][0] += e
      totals[name][1] += n
  return {name: e / max(n, 1) for name, (e, n) in totals.items()}
