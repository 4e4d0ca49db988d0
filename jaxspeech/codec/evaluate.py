"""Codec quality on held-out audio: mel distance, STOI, wideband PESQ, codebook usage and perplexity.

STOI and PESQ come from `jaxspeech.audio.quality`. Codebook usage and perplexity need the code histogram of the
whole eval set, which the trainer's (sum, count) metrics cannot carry: `evaluate_workdir` (`jaxspeech codec
eval`) reports every metric, histogram included.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxspeech.audio import quality
from jaxspeech.codec import inference, tokenize
from jaxspeech.data import tfds_io
from jaxspeech.gan import losses

def codebook_stats(counts_K: np.ndarray) -> dict[str, float]:
  """Usage (the fraction of the K codes that occur) and perplexity exp(H) of the code histogram."""
  p_K = counts_K / max(counts_K.sum(), 1)
  nonzero = p_K[p_K > 0]
  return {"codebook_usage": float((counts_K > 0).mean()),
          "codebook_perplexity": float(np.exp(-(nonzero * np.log(nonzero)).sum()))}


def evaluate_workdir(workdir: str, data_dir: str, split: str = "validation", *, per_device: int = 4,
                     bucket_seconds: float = 1.0, limit: int | None = None) -> dict[str, float]:
  """Every metric of a codec workdir's newest checkpoint on whole utterances of `split` (the first `limit`)."""
  codec, sample_rate, hop = tokenize.load_codec(workdir)
  source = tfds_io.data_source(data_dir, split)
  wavs = [inference.decode_audio(source[i], sample_rate) for i in range(min(len(source), limit or len(source)))]

  def reconstruct(wav_BxS, lengths_B):
    codes_BxN = codec.encode(wav_BxS)
    mask_BxS = jnp.arange(wav_BxS.shape[1]) < lengths_B[:, None]
    wav_hat_BxS = jnp.where(mask_BxS, codec.decode(codes_BxN)[:, :wav_BxS.shape[1]], 0.0)
    return codes_BxN, wav_hat_BxS, losses.mel_distance(wav_BxS, wav_hat_BxS, sample_rate)

  counts_K = np.zeros(codec.quantizer.codebook_size, np.int64)
  sums = dict.fromkeys(("mel_distance", "stoi", "pesq"), 0.0)
  bucket = max(int(bucket_seconds * sample_rate) // hop, 1) * hop
  done = 0
  for (codes_BxN, wav_hat_BxS, mel_B), wav_BxS, lengths_B in inference.run_batched(
      reconstruct, wavs, per_device=per_device, bucket=bucket):
    valid_B = lengths_B > 0
    stoi_B, pesq_B = quality.scores(wav_BxS, wav_hat_BxS, lengths_B, valid_B, sample_rate)
    for name, values in (("mel_distance", mel_B), ("stoi", stoi_B), ("pesq", pesq_B)):
      sums[name] += float(np.sum(values[valid_B]))
    for row, length in zip(codes_BxN[valid_B], lengths_B[valid_B]):
      counts_K += np.bincount(row[:-(-int(length) // hop)], minlength=len(counts_K))
    done += int(valid_B.sum())
  return {**{k: v / max(done, 1) for k, v in sums.items()}, **codebook_stats(counts_K), "utterances": done}
