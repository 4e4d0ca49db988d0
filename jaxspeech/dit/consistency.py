"""Consistency distillation of a trained DiT (CoMoSpeech's recipe, on F5's σ = 0 flow): few-step sampling.

The student is a DiT of the teacher's architecture, started from the teacher's weights. Its consistency function
maps any point of the teacher's ODE trajectory to its end, the data at t = 1:

    f(x, t) = x + (1 − t)·v_student(x, t)              (f(x, 1) = x: the boundary condition holds by construction)

For each example a step n of the teacher's grid t_0 = 0 < … < t_N = 1 (F5's sway grid) is drawn, x at t_n put on
the path (1 − t_n)·x0 + t_n·x1, and the teacher's guided flow (CFG `cfg_strength`) takes it one solver step to
x̂ at t_{n+1}. The loss is the masked-span MSE between f(x, t_n) and f(x̂, t_{n+1}) under stop_gradient, the
target being the student itself without EMA, as in Song & Dhariwal's improved consistency training. The
conditions never drop: the teacher's guidance is distilled, so the student samples without CFG
(`solvers.consistency`, one forward per step).

In a run, the teacher is the model's frozen `teacher` submodule (no gradient, no optimizer state), read with
the student from `train.init_from`, a trained dit workdir (`adapt_init`).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspeech.dit import sample
from jaxspeech.dit.objective import Objective, span_mask

TEACHER = "teacher"
TEACHER_SOLVERS = {"euler": 1, "heun": 2}   # the teacher's guided flow evaluations per step


@dataclasses.dataclass(frozen=True)
class Distill:
  steps: int = 32               # N: the teacher's grid, F5's `sample.timesteps(N, sway)`
  sway: float = -1.0
  cfg_strength: float = 2.0     # the teacher's guidance, built into the student
  teacher_solver: str = "euler"

  def __post_init__(self):
    if self.teacher_solver not in TEACHER_SOLVERS:
      raise ValueError(f"distill.teacher_solver={self.teacher_solver!r}; choose one of {sorted(TEACHER_SOLVERS)}")


def denoise(model, x_BxLxM, cond_BxLxM, text_BxNt, t_B, valid_BxL):
  """The consistency function f(x, t) = x + (1 − t)·v(x, t): the model's estimate of the data at t = 1."""
  v = model(x_BxLxM, cond_BxLxM, text_BxNt, t_B, valid_BxL)
  return x_BxLxM + (1 - t_B)[:, None, None] * v


def teacher_step(teacher, x_BxLxM, cond_BxLxM, text_BxNt, t_B, s_B, valid_BxL, distill: Distill):
  """x at s_B from x at t_B by one step of the teacher's guided flow (Euler, or Heun's trapezoid)."""
  def flow(x, t):
    return sample.guided_flow(teacher, x, cond_BxLxM, text_BxNt, t, valid_BxL, distill.cfg_strength)
  dt = (s_B - t_B)[:, None, None]
  v0 = flow(x_BxLxM, t_B)
  if distill.teacher_solver == "euler":
    return x_BxLxM + dt * v0
  return x_BxLxM + dt / 2 * (v0 + flow(x_BxLxM + dt * v0, s_B))


def frozen(module):
  """`module` with its state under stop_gradient."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def consistency_loss(student, teacher, mel_BxLxM, frames_B, text_BxNt, key, distill: Distill = Distill(),
                     objective: Objective = Objective()):
  """(loss, per-example masked squared error (B,), per-example masked element count (B,)), over the infilled
  span as F5's loss (its span fractions from `objective`; the CFG drops do not apply)."""
  b, n, m = mel_BxLxM.shape
  keys = jax.random.split(key, 4)
  valid_BxL = jnp.arange(n) < frames_B[:, None]
  x1 = jnp.where(valid_BxL[..., None], mel_BxLxM.astype(jnp.float32), 0.0)
  x0 = jax.random.normal(keys[0], x1.shape)
  times_S = jnp.asarray(sample.timesteps(distill.steps, distill.sway, epss=False))
  step_B = jax.random.randint(keys[1], (b,), 0, distill.steps)
  t_B, s_B = times_S[step_B], times_S[step_B + 1]
  frac_B = jax.random.uniform(keys[2], (b,), minval=objective.frac_lengths[0], maxval=objective.frac_lengths[1])
  span_BxL = span_mask(keys[3], frames_B, frac_B, n) & valid_BxL
  cond = jnp.where(span_BxL[..., None], 0.0, x1)
  x_t = (1 - t_B)[:, None, None] * x0 + t_B[:, None, None] * x1
  x_s = jax.lax.stop_gradient(teacher_step(frozen(teacher), x_t, cond, text_BxNt, t_B, s_B, valid_BxL, distill))
  target = jax.lax.stop_gradient(denoise(student, x_s, cond, text_BxNt, s_B, valid_BxL))
  pred = denoise(student, x_t, cond, text_BxNt, t_B, valid_BxL)
  se_B = jnp.sum(jnp.square(pred - target) * span_BxL[..., None], axis=(1, 2))
  count_B = span_BxL.sum(1).astype(jnp.float32) * m
  return se_B.sum() / jnp.maximum(count_B.sum(), 1.0), se_B, count_B


def forwards_per_step(distill: Distill) -> int:
  """Model forwards a distillation step runs per example, in units of one forward of the student: the
  teacher's guided flow (2 rows each under CFG), the target, and the student's forward and backward (3)."""
  guided = 2 if distill.cfg_strength >= 1e-5 else 1
  return guided * TEACHER_SOLVERS[distill.teacher_solver] + 1 + 3


def with_teacher(loaded: dict) -> dict:
  """A dit workdir's params (dotted paths) as both the student's and the teacher's; a distillation workdir's
  (which has its teacher) as they are."""
  if any(k.startswith(TEACHER + ".") for k in loaded):
    return loaded
  return {**loaded, **{f"{TEACHER}.{k}": v for k, v in loaded.items()}}


def student_params(params: dict) -> dict:
  """The student's params of a distillation workdir's (the teacher's left out); other params as they are."""
  return {k: v for k, v in params.items() if not k.startswith(TEACHER + ".")}


def is_teacher(path: tuple[str, ...]) -> bool:
  return bool(path) and str(path[0]) == TEACHER
