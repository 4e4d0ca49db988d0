"""Codec quality on held-out audio: mel distance, STOI, wideband PESQ, codebook usage and perplexity.

STOI (pystoi) and PESQ (pesq) are numpy code: inside a jitted eval step they run on the host through
`jax.pure_callback` (`host_scores`). Codebook usage and perplexity need the code histogram of the whole eval
set, which the trainer's (sum, count) metrics cannot carry: `evaluate_workdir` (`jaxspeech codec eval`)
reports every metric, histogram included.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pesq as pesq_lib
import pystoi

PESQ_RATE = 16_000   # PESQ wideband is defined at 16 kHz


def _scores(ref_BxS, deg_BxS, lengths_B, valid_B, sample_rate):
  """(STOI, PESQ) per row as float32; 0 for rows that are not valid, PESQ -1 where it cannot score."""
  stoi_B, pesq_B = np.zeros(len(ref_BxS), np.float32), np.zeros(len(ref_BxS), np.float32)
  for i in np.flatnonzero(valid_B):
    ref, deg = np.asarray(ref_BxS[i, :lengths_B[i]], np.float64), np.asarray(deg_BxS[i, :lengths_B[i]], np.float64)
    stoi_B[i] = pystoi.stoi(ref, deg, sample_rate)
    if sample_rate == PESQ_RATE:
      score = pesq_lib.pesq(PESQ_RATE, ref, deg, "wb", on_error=pesq_lib.PesqError.RETURN_VALUES)
      pesq_B[i] = score if np.isfinite(score) else -1.0   # NaN on (near-)silent output
  return stoi_B, pesq_B


def host_scores(wav_BxS, wav_hat_BxS, lengths_B, valid_B, sample_rate: int) -> dict[str, jax.Array]:
  """{"stoi": (B,), "pesq": (B,)} computed on the host; PESQ only at 16 kHz."""
  shape = jax.ShapeDtypeStruct(lengths_B.shape, jnp.float32)
  stoi_B, pesq_B = jax.pure_callback(
      lambda *a: _scores(*a, sample_rate), (shape, shape), wav_BxS, wav_hat_BxS, lengths_B, valid_B)
  return {"stoi": stoi_B, "pesq": pesq_B} if sample_rate == PESQ_RATE else {"stoi": stoi_B}


def codebook_stats(counts_K: np.ndarray) -> dict[str, float]:
  """Usage (the fraction of the K codes that occur) and perplexity exp(H) of the code histogram."""
  p_K = counts_K / max(counts_K.sum(), 1)
  nonzero = p_K[p_K > 0]
  return {"codebook_usage": float((counts_K > 0).mean()),
          "codebook_perplexity": float(np.exp(-(nonzero * np.log(nonzero)).sum()))}


def evaluate_workdir(workdir: str, data_dir: str, split: str = "validation", *, per_device: int = 4,
                     bucket_seconds: float = 1.0, limit: int | None = None) -> dict[str, float]:
  """Every metric of a codec workdir's newest checkpoint on whole utterances of `split` (the first `limit`)."""
  from jaxspeech.codec import inference, tokenize  # pylint: disable=import-outside-toplevel
  from jaxspeech.gan import losses  # pylint: disable=import-outside-toplevel
  from jaxspeech.data import tfds_io  # pylint: disable=import-outside-toplevel
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
    stoi_B, pesq_B = _scores(wav_BxS, wav_hat_BxS, lengths_B, valid_B, sample_rate)
    for name, values in (("mel_distance", mel_B), ("stoi", stoi_B), ("pesq", pesq_B)):
      sums[name] += float(np.sum(values[valid_B]))
    for row, length in zip(codes_BxN[valid_B], lengths_B[valid_B]):
      counts_K += np.bincount(row[:-(-int(length) // hop)], minlength=len(counts_K))
    done += int(valid_B.sum())
  return {**{k: v / max(done, 1) for k, v in sums.items()}, **codebook_stats(counts_K), "utterances": done}
