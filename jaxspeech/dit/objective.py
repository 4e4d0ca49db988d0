"""Conditional flow matching with infilling (F5-TTS's CFM.forward), drawn per example.

σ = 0 linear path x_t = (1 − t)·x0 + t·x1 with x0 ~ N(0, I), x1 the mel, t ~ U(0, 1); the target is x1 − x0.
One contiguous span of ⌊frac·len⌋ frames, frac ~ U(0.7, 1), is zeroed in the cond and is where the MSE is
taken. Classifier-free guidance drops the audio cond with p = 0.3, and audio and text together with p = 0.2
(F5 draws one drop for the whole batch; here each example draws its own).
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Objective:
  frac_lengths: tuple[float, float] = (0.7, 1.0)
  audio_drop_prob: float = 0.3
  cond_drop_prob: float = 0.2


def span_mask(key, lengths_B, frac_B, n: int):
  """F5's mask_from_frac_lengths: ⌊frac·len⌋ frames starting at ⌊(len − span)·u⌋, u ~ U(0, 1)."""
  spans_B = jnp.floor(frac_B * lengths_B).astype(jnp.int32)
  start_B = jnp.floor((lengths_B - spans_B) * jax.random.uniform(key, lengths_B.shape)).astype(jnp.int32)
  pos_N = jnp.arange(n)
  return (pos_N >= start_B[:, None]) & (pos_N < (start_B + spans_B)[:, None])


def flow_matching_loss(model, mel_BxLxM, frames_B, text_BxNt, key, objective: Objective = Objective()):
  """(loss, per-example masked MSE (B,), per-example masked frame count (B,)); mel frames past `frames_B` are
  ignored. The loss is the mean squared error over the masked span's elements, as F5's."""
  b, n, m = mel_BxLxM.shape
  keys = jax.random.split(key, 6)
  valid_BxL = jnp.arange(n) < frames_B[:, None]
  x1 = jnp.where(valid_BxL[..., None], mel_BxLxM.astype(jnp.float32), 0.0)
  x0 = jax.random.normal(keys[0], x1.shape)
  t_B = jax.random.uniform(keys[1], (b,))
  frac_B = jax.random.uniform(keys[2], (b,), minval=objective.frac_lengths[0], maxval=objective.frac_lengths[1])
  span_BxL = span_mask(keys[3], frames_B, frac_B, n) & valid_BxL
  drop_text_B = jax.random.uniform(keys[4], (b,)) < objective.cond_drop_prob
  drop_audio_B = (jax.random.uniform(keys[5], (b,)) < objective.audio_drop_prob) | drop_text_B
  t = t_B[:, None, None]
  x_t = (1 - t) * x0 + t * x1
  cond = jnp.where(span_BxL[..., None], 0.0, x1)
  pred = model(x_t, cond, text_BxNt, t_B, valid_BxL, drop_audio_B, drop_text_B)
  se_B = jnp.sum(jnp.square(pred - (x1 - x0)) * span_BxL[..., None], axis=(1, 2))
  count_B = span_BxL.sum(1).astype(jnp.float32) * m
  return se_B.sum() / jnp.maximum(count_B.sum(), 1.0), se_B, count_B
