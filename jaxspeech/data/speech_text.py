"""Frame-budget batches of speech with its transcript, as the dit and asr families train on them: about
`data.frame_budget` frames a batch, similar lengths together (one compile per bucket of `data.bucket_seconds`),
transcripts padded to `data.max_text`."""

import jax
import jax.numpy as jnp

from jaxspeech import sharding
from jaxspeech.data import batching

ROWS = ("activation_batch",)
AXES = {"audio": ROWS + (None,), "audio_lengths": ROWS, "audio_mask": ROWS + (None,), "text": ROWS + (None,),
        "text_lengths": ROWS, "text_mask": ROWS + (None,), "speaker_id": ROWS, "valid": ROWS}


def frame_budget(cfg, shard_count: int, sample_rate: int, hop: int, row_multiple: int | None = None
                 ) -> batching.FrameBudget:
  """Batches of about `data.frame_budget` frames of `hop` samples (over `shard_count` hosts), rows a multiple of
  `row_multiple` (default: this host's devices) times `optim.accum_steps`, so every microbatch splits over the
  devices."""
  buckets = batching.Buckets(tuple(int(s * sample_rate) // hop * hop for s in cfg.data.bucket_seconds))
  return batching.FrameBudget(
      cfg.data.frame_budget // shard_count, "audio", buckets, hop=hop,
      pad_extra={"text": batching.Buckets((cfg.data.max_text,))},
      row_multiple=(row_multiple or jax.local_device_count()) * int(cfg.optim.accum_steps))


def batch_shapes(cfg, sample_rate: int, hop: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The batch of the longest bucket (the most frames per row: the most activation memory); under sharding rules
  (the planner's), rows a multiple of the batch shards."""
  budget = frame_budget(cfg, 1, sample_rate, hop, max(sharding.shards("activation_batch"), jax.local_device_count()))
  samples, text = budget.buckets.lengths[-1], cfg.data.max_text
  rows, spec = budget.rows(samples), jax.ShapeDtypeStruct
  return {"audio": spec((rows, samples), jnp.float32), "audio_mask": spec((rows, samples), jnp.bool_),
          "text": spec((rows, text), jnp.int32), "text_mask": spec((rows, text), jnp.bool_),
          **{k: spec((rows,), jnp.int32) for k in ("audio_lengths", "text_lengths", "speaker_id")},
          "valid": spec((rows,), jnp.bool_)}
