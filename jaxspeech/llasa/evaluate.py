"""Llasa synthesis on held-out corpus sentences, scored against the recordings (`jaxspeech.audio.quality`)."""

import numpy as np

from jaxspeech.audio import quality


def evaluate_synthesis(lm, codec, tokenizer, vocab, data_path: str, split: str, key, *, count: int = 16,
                       max_seconds: float = 20.0, embed=None, sampling=None, sample_rate: int = 16_000
                       ) -> dict[str, float]:
  """Means over the first `count` utterances of a speech dataset (`jaxspeech data synth`'s held-out split) of
  MCD-DTW (dB) and duration ratio of the synthesized speech against the recording, and with `embed` (e.g.
  `verify.ast_embedder`) the speaker similarity to it. `sample_rate` is the codec's."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxspeech.audio import io as audio_io  # pylint: disable=import-outside-toplevel
  from jaxspeech.data import tfds_io  # pylint: disable=import-outside-toplevel
  from jaxspeech.llasa import generate, synthesis  # pylint: disable=import-outside-toplevel

  source = tfds_io.data_source(data_path, split)
  rows = {"mcd_dtw": [], "duration_ratio": [], "speaker_similarity": []}
  for i in range(min(count, len(source))):
    record = source[i]
    truth_S = audio_io.resample(audio_io.to_float(record["audio"]), int(record["sample_rate"]), sample_rate)
    result = synthesis.synthesize(lm, codec, tokenizer, vocab, record["text"].decode(), jax.random.fold_in(key, i),
                                  max_seconds=max_seconds, sampling=sampling or generate.Sampling(),
                                  sample_rate=sample_rate)
    rows["duration_ratio"].append(quality.duration_ratio(truth_S, result.wav))
    if len(result.wav) == 0:
      continue
    rows["mcd_dtw"].append(quality.mcd_dtw(truth_S, result.wav, sample_rate))
    if embed is not None:
      a, b = embed(truth_S), embed(result.wav)
      rows["speaker_similarity"].append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
  return {name: float(np.mean(values)) for name, values in rows.items() if values}
