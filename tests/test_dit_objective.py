"""The flow-matching objective's draws: the infilling span, the cond, the path, the CFG drop rates, the loss."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxspeech.dit.objective import Objective, flow_matching_loss, span_mask


class Recorder:
  """A flow model that predicts zero and keeps what it was given."""

  def __call__(self, x_t, cond, text, t_B, valid_BxL, drop_audio_B, drop_text_B):
    self.seen = dict(x_t=x_t, cond=cond, t=t_B, valid=valid_BxL, drop_audio=drop_audio_B, drop_text=drop_text_B)
    return jnp.zeros_like(x_t)


def test_span_is_one_contiguous_run_of_floor_frac_len_frames_inside_the_clip():
  lengths = jnp.array([100, 37, 5, 64])
  frac = jnp.array([0.7, 0.99, 0.8, 1.0])
  mask = np.asarray(span_mask(jax.random.PRNGKey(3), lengths, frac, 120))
  for row, n, f in zip(mask, np.asarray(lengths), np.asarray(frac)):
    idx = np.flatnonzero(row)
    assert len(idx) == int(np.floor(np.float32(f) * np.float32(n))) and idx.max() < n  # float32, as F5
    assert np.all(np.diff(idx) == 1)


def test_cond_path_drops_and_loss():
  b, n, m = 512, 40, 4
  mel = jax.random.normal(jax.random.PRNGKey(0), (b, n, m)) - 3.0
  frames = jax.random.randint(jax.random.PRNGKey(1), (b,), 10, n + 1)
  model = Recorder()
  loss, se_B, count_B = flow_matching_loss(model, mel, frames, jnp.zeros((b, 8), jnp.int32), jax.random.PRNGKey(2),
                                           Objective())
  seen = {k: np.asarray(v) for k, v in model.seen.items()}
  valid = np.arange(n)[None] < np.asarray(frames)[:, None]
  np.testing.assert_array_equal(seen["valid"], valid)
  span = (seen["cond"] == 0).all(-1) & valid
  x1 = np.where(valid[..., None], np.asarray(mel), 0)
  np.testing.assert_array_equal(seen["cond"][~span], x1[~span])  # the cond is the mel off the span
  fraction = span.sum(1) / np.asarray(frames)
  assert fraction.min() >= 0.6 and fraction.max() <= 1.0 and 0.8 < fraction.mean() < 0.9  # ~U(0.7, 1)
  # x_t = (1 − t)·x0 + t·x1: recover x0 and check it is standard normal
  t = seen["t"][:, None, None]
  x0 = (seen["x_t"] - t * x1) / np.maximum(1 - t, 1e-3)
  keep = (seen["t"] < 0.9)[:, None] & valid
  assert abs(x0[keep].mean()) < 0.05 and abs(x0[keep].std() - 1) < 0.05
  # drop text only with audio; audio alone 0.3, both 0.2: P(audio) = 0.2 + 0.8·0.3 = 0.44
  assert not np.any(seen["drop_text"] & ~seen["drop_audio"])
  assert abs(seen["drop_text"].mean() - 0.2) < 0.06 and abs(seen["drop_audio"].mean() - 0.44) < 0.07
  # a zero prediction: the loss is the mean of (x1 − x0)² over the span's elements only
  target = x1 - x0
  want = np.sum(np.square(target) * span[..., None], axis=(1, 2))
  np.testing.assert_allclose(np.asarray(se_B)[np.asarray(seen["t"]) < 0.9], want[np.asarray(seen["t"]) < 0.9],
                             rtol=1e-3)
  np.testing.assert_allclose(np.asarray(count_B), span.sum(1) * m)
  np.testing.assert_allclose(float(loss), float(np.asarray(se_B).sum() / (span.sum() * m)), rtol=1e-6)
