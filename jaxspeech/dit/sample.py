"""Zero-shot synthesis with a flow-matching DiT: F5-TTS's CFM.sample as one jitted `lax.scan` over ODE steps.

The reference mel fills the first `ref_frames` frames of the cond; the model infills the rest up to each
example's duration. Each step evaluates the conditioned and the unconditioned flow in one batched forward and
mixes them as v = v_c + w·(v_c − v_u) (w = `cfg_strength`; F5's default 2). The time grid is F5's: its
empirically pruned steps (EPSS) for NFE in {5, 6, 7, 10, 12, 16}, else uniform, then sway sampling
t ← t + s·(cos(πt/2) − 1 + t) (s = −1 by default).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.dit import solvers

EPSS = {  # F5's predefined grids, in 1/32 units
    5: (0, 2, 4, 8, 16, 32),
    6: (0, 2, 4, 6, 8, 16, 32),
    7: (0, 2, 4, 6, 8, 16, 24, 32),
    10: (0, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32),
    12: (0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32),
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32),
}


def timesteps(nfe: int, sway: float | None = -1.0, epss: bool = True) -> np.ndarray:
  """The nfe + 1 times from 0 to 1 the solver steps through (float32)."""
  if epss and nfe in EPSS:
    t = np.asarray(EPSS[nfe], np.float32) / 32
  else:
    t = np.linspace(0, 1, nfe + 1, dtype=np.float32)
  if sway is not None:
    t = t + np.float32(sway) * (np.cos(np.pi / 2 * t, dtype=np.float32) - 1 + t)
  return t.astype(np.float32)


def durations(ref_frames: int, ref_text: str, gen_text: str, speed: float = 1.0) -> int:
  """F5's total frames (reference included) from the reference's speaking rate, in UTF-8 bytes per frame."""
  ref_len, gen_len = len(ref_text.encode("utf-8")), len(gen_text.encode("utf-8"))
  return ref_frames + int(ref_frames / ref_len * gen_len / speed)


def guided_flow(model, x_BxLxM, cond_BxLxM, text_BxNt, t_B, valid_BxL, cfg_strength: float):
  """The flow at one ODE step with classifier-free guidance: conditioned and unconditioned in one batch of 2B."""
  b = x_BxLxM.shape[0]
  if cfg_strength < 1e-5:
    return model(x_BxLxM, cond_BxLxM, text_BxNt, t_B, valid_BxL)
  drop_2B = jnp.arange(2 * b) >= b
  both = model(*(jnp.concatenate([a, a]) for a in (x_BxLxM, cond_BxLxM, text_BxNt)), jnp.concatenate([t_B, t_B]),
               jnp.concatenate([valid_BxL, valid_BxL]), drop_2B, drop_2B)
  v_c, v_u = both[:b], both[b:]
  return v_c + (v_c - v_u) * cfg_strength


class Sampled(NamedTuple):
  mel: jax.Array          # (B, L, M) float32: each example's reference frames kept, frames past its duration junk
  duration: np.ndarray    # (B,) frames, reference included
  evaluations: int        # flow evaluations (each one batched forward of the conditioned and unconditioned flow)


@functools.partial(jax.jit, static_argnames=("cfg_strength", "method"))
def _solve(graphdef, state, noise_BxLxM, cond_BxLxM, text_BxNt, valid_BxL, times_S, cfg_strength, method, rtol,
           atol, key):
  model = nnx.merge(graphdef, state)

  def flow(t, x_BxLxM):
    return guided_flow(model, x_BxLxM, cond_BxLxM, text_BxNt, jnp.full((x_BxLxM.shape[0],), t), valid_BxL,
                       cfg_strength)

  if method in solvers.FEW_STEP:
    return solvers.consistency(flow, noise_BxLxM, times_S, key, valid_BxL[..., None]), None
  if method in solvers.ADAPTIVE:
    return solvers.dopri5(flow, noise_BxLxM, rtol=rtol, atol=atol, weight=valid_BxL[..., None])
  return solvers.fixed(flow, noise_BxLxM, times_S, method), None


def sample(model, ref_mel_BxRxM, ref_frames_B, text_BxNt, duration_B, key=None, *, noise_BxLxM=None, nfe: int = 32,
           cfg_strength: float = 2.0, sway: float | None = -1.0, method: str = "euler", epss: bool = True,
           max_duration: int = 4096, rtol: float = 1e-3, atol: float = 1e-4) -> Sampled:
  """The mel, each example's reference frames kept, and its durations, by `method` (`solvers.METHODS`).

  `text_BxNt` holds the reference and the new text's ids (−1 padded). Durations are raised to at least the
  text length and the reference length plus one and capped at `max_duration`, as F5 does; L is the longest.
  Noise is drawn from `key` unless `noise_BxLxM` is given (it must be zero past each duration, as F5's).
  A fixed-grid method takes `nfe` steps over F5's time grid (`timesteps`); the adaptive `dopri5` chooses its
  own steps by `rtol` and `atol` (`nfe`, `sway` and `epss` do not apply to it). `consistency` jumps `nfe`
  times over the same grid, re-noising from `key` (a fixed one when only `noise_BxLxM` is given); a distilled
  student has its teacher's guidance built in, so give it `cfg_strength=0`.
  """
  if method not in solvers.METHODS:
    raise ValueError(f"method={method!r}; choose one of {solvers.METHODS}")
  text_BxNt = np.asarray(text_BxNt)
  ref_frames_B = np.asarray(ref_frames_B)
  duration_B = np.maximum(np.maximum((text_BxNt != -1).sum(-1), ref_frames_B) + 1, np.asarray(duration_B))
  duration_B = np.minimum(duration_B, max_duration)
  n, m = int(duration_B.max()), ref_mel_BxRxM.shape[-1]
  valid_BxL = np.arange(n)[None] < duration_B[:, None]
  if noise_BxLxM is None:
    noise_BxLxM = jax.random.normal(key, (len(duration_B), n, m)) * valid_BxL[..., None]
  ref_BxLxM = jnp.asarray(ref_mel_BxRxM, jnp.float32)[:, :n]
  ref_BxLxM = jnp.pad(ref_BxLxM, ((0, 0), (0, n - ref_BxLxM.shape[1]), (0, 0)))
  keep_BxLx1 = (np.arange(n)[None] < ref_frames_B[:, None])[..., None]
  cond_BxLxM = jnp.where(keep_BxLx1, ref_BxLxM, 0.0)
  graphdef, state = nnx.split(model)
  times_S = timesteps(nfe, sway, epss)
  x, evaluations = _solve(graphdef, state, jnp.asarray(noise_BxLxM, jnp.float32), cond_BxLxM,
                          jnp.asarray(text_BxNt, jnp.int32), jnp.asarray(valid_BxL), jnp.asarray(times_S),
                          float(cfg_strength), method, rtol, atol,
                          jax.random.fold_in(jax.random.PRNGKey(0) if key is None else key, 1))
  if evaluations is None:  # a fixed grid's count is known without waiting for the device
    evaluations = solvers.evaluations(method, len(times_S) - 1)
  return Sampled(jnp.where(keep_BxLx1, cond_BxLxM, x), duration_B, int(evaluations))
