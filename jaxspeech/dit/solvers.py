"""ODE solvers for the flow dx/dt = v(t, x) from noise at t = 0 to data at t = 1, each one jitted loop.

Fixed grids (the times come from `sample.timesteps`, so EPSS and sway apply to all of them):
- `euler` (1 evaluation per step) and `midpoint` (2), as F5-TTS's torchdiffeq options;
- `heun` (2): Euler's predictor, then the trapezoid of the flows at both ends;
- `ab2` (1): two-step Adams–Bashforth on the flow (variable step), second order for the price of Euler; the
  flow-matching analogue of DPM-Solver++(2M). Its first step is Euler's.
Few-step, for a consistency-distilled DiT (`jaxspeech.dit.consistency`):
- `consistency` (1): multistep consistency sampling (Song et al. 2023, Algorithm 1) on the σ = 0 path: at each
  time t the model's one-jump estimate of the data, x̂1 = x + (1 − t)·v(t, x), re-noised to the next time t' as
  (1 − t')·z + t'·x̂1 with fresh noise z; the last time is 1, where that is x̂1 itself.
Adaptive:
- `dopri5`: Dormand–Prince 5(4) with first-same-as-last, Hairer's initial step, and the step size chosen from
  the RMS error over `rtol`, `atol` (torchdiffeq's `dopri5`, scipy's `RK45`). One step size for the batch.
"""

import jax
import jax.numpy as jnp

FIXED = ("euler", "midpoint", "heun", "ab2")
ADAPTIVE = ("dopri5",)
FEW_STEP = ("consistency",)
METHODS = FIXED + ADAPTIVE + FEW_STEP
PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "ab2": 1, "consistency": 1}
ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "ab2": 2, "dopri5": 5}   # global error ∝ steps^-order

# Dormand–Prince: nodes, the stage matrix, the 5th-order weights (the last stage's row: FSAL), 5th − 4th order
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = ((),
      (1 / 5,),
      (3 / 40, 9 / 40),
      (44 / 45, -56 / 15, 32 / 9),
      (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
      (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
      (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_A[6] + (0.0,), _B4))


def evaluations(method: str, steps: int) -> int:
  """Flow evaluations a fixed-grid solve of `steps` steps makes."""
  return PER_STEP[method] * steps


def fixed(flow, x, times_S: jax.Array, method: str) -> jax.Array:
  """x at times_S[-1], from x at times_S[0], stepping through every time in `times_S`."""
  if method == "ab2":
    def ab2(carry, ts):
      x, v_prev, dt_prev = carry
      t0, t1 = ts
      dt, v = t1 - t0, flow(t0, x)
      ratio = jnp.where(dt_prev > 0, dt / jnp.maximum(dt_prev, 1e-12), 0.0)   # 0 on the first step: Euler
      return (x + dt * ((1 + ratio / 2) * v - ratio / 2 * v_prev), v, dt), None
    (x, _, _), _ = jax.lax.scan(ab2, (x, jnp.zeros_like(x), jnp.zeros((), times_S.dtype)),
                                (times_S[:-1], times_S[1:]))
    return x

  def step(x, ts):
    t0, t1 = ts
    dt = t1 - t0
    v0 = flow(t0, x)
    if method == "euler":
      return x + dt * v0, None
    if method == "midpoint":
      return x + dt * flow(t0 + dt / 2, x + dt / 2 * v0), None
    return x + dt / 2 * (v0 + flow(t1, x + dt * v0)), None   # heun
  x, _ = jax.lax.scan(step, x, (times_S[:-1], times_S[1:]))
  return x


def consistency(flow, x, times_S: jax.Array, key: jax.Array, noise_mask) -> jax.Array:
  """The data estimate after one jump per time of `times_S` but the last (which must be 1), from noise x at
  times_S[0]; `noise_mask` (broadcastable to x) zeroes the fresh noise where x's own noise is zero (padding)."""
  def step(x, inputs):
    t0, t1, key = inputs
    x1 = x + (1 - t0) * flow(t0, x)
    return (1 - t1) * jax.random.normal(key, x.shape, x.dtype) * noise_mask + t1 * x1, None
  keys = jax.random.split(key, times_S.shape[0] - 1)
  x, _ = jax.lax.scan(step, x, (times_S[:-1], times_S[1:], keys))
  return x


def _rms(x, weight):
  return jnp.sqrt(jnp.sum(weight * x ** 2) / jnp.maximum(jnp.sum(weight * jnp.ones_like(x)), 1.0))


def dopri5(flow, x, *, rtol: float = 1e-3, atol: float = 1e-4, max_steps: int = 256, weight=None,
           t_start: float = 0.0, t_end: float = 1.0):
  """(x at t_end, flow evaluations made): adaptive Dormand–Prince 5(4) from x at t_start.

  `weight` (broadcastable to x, 1 where an element counts) keeps padding out of the error norm. A solve that
  needs more than `max_steps` steps (accepted or not) stops early: check the evaluations against 6·max_steps + 2.
  """
  weight = jnp.ones((), x.dtype) if weight is None else jnp.asarray(weight, x.dtype)
  t_start, t_end = jnp.float32(t_start), jnp.float32(t_end)

  def scale(a, b):
    return atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))

  # Hairer, Nørsett & Wanner's starting step (one extra evaluation), as torchdiffeq and scipy choose it
  v0 = flow(t_start, x)
  d0, d1 = _rms(x / scale(x, x), weight), _rms(v0 / scale(x, x), weight)
  h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
  v1 = flow(t_start + h0, x + h0 * v0)
  d2 = _rms((v1 - v0) / scale(x, x), weight) / h0
  h1 = jnp.where(jnp.maximum(d1, d2) <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                 (0.01 / jnp.maximum(d1, d2)) ** (1 / 5))
  h = jnp.minimum(jnp.minimum(100 * h0, h1), t_end - t_start)

  def attempt(state):
    t, x, v, h, nfe, steps = state
    h = jnp.minimum(h, t_end - t)
    k = [v]
    for i in range(1, 7):
      k.append(flow(t + _C[i] * h, x + h * sum(a * kj for a, kj in zip(_A[i], k) if a)))
    x_new = x + h * sum(b * kj for b, kj in zip(_A[6], k) if b)   # = the 7th stage's input
    error = _rms(h * sum(e * kj for e, kj in zip(_E, k) if e) / scale(x, x_new), weight)
    accept = error <= 1.0
    factor = jnp.clip(0.9 * jnp.maximum(error, 1e-10) ** (-1 / 5), 0.2, 10.0)
    return (jnp.where(accept, t + h, t), jnp.where(accept, x_new, x), jnp.where(accept, k[6], v), h * factor,
            nfe + 6, steps + 1)

  def running(state):
    t, _, _, _, _, steps = state
    return (t < t_end - 1e-6) & (steps < max_steps)

  _, x, _, _, nfe, _ = jax.lax.while_loop(running, attempt, (t_start, x, v0, h, jnp.int32(2), jnp.int32(0)))
  return x, nfe

