"""Consistency distillation (jaxspeech.dit.consistency) and the few-step sampler, on flows whose trajectories are
known: the exact flow of a point mass c, v(x, t) = (c − x)/(1 − t), whose every ODE trajectory is the straight
line to c, so its consistency function is c everywhere."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import dit as dit_configs
from jaxspeech.dit import cli as dit_cli, consistency, family, sample, solvers

B, L, M = 3, 12, 4


class PointMass(nnx.Module):
  """The model interface of a DiT whose flow carries every x to `target` (times `scale`, 1 = exact)."""

  def __init__(self, target, scale: float = 1.0):
    self.target = nnx.Variable(jnp.asarray(target, jnp.float32))
    self.scale = scale

  def __call__(self, x, cond, text, t_B, valid=None, drop_audio_B=False, drop_text_B=False):
    del cond, text, valid, drop_audio_B, drop_text_B
    return self.scale * (self.target[...] - x) / jnp.maximum(1 - t_B, 1e-6)[:, None, None]


def batch(seed=0):
  rng = np.random.default_rng(seed)
  mel = jnp.asarray(rng.normal(size=(B, L, M)), jnp.float32)
  frames = jnp.asarray([12, 9, 7])
  text = jnp.asarray(rng.integers(0, 5, size=(B, 6)))
  return mel, frames, text


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampler_lands_on_the_point_mass_in_any_number_of_jumps(steps):
  target = np.random.default_rng(1).normal(size=(B, L, M)).astype(np.float32)
  model = PointMass(target)
  valid_BxL = np.arange(L)[None] < np.asarray([12, 9, 7])[:, None]
  noise = jax.random.normal(jax.random.PRNGKey(2), (B, L, M)) * valid_BxL[..., None]
  x = solvers.consistency(lambda t, x: model(x, None, None, jnp.full((B,), t)), noise,
                          jnp.asarray(sample.timesteps(steps, -1.0, epss=False)), jax.random.PRNGKey(3),
                          valid_BxL[..., None])
  np.testing.assert_allclose(x, target, atol=1e-5)


def test_consistency_sampler_renoises_between_jumps():
  """With a flow that is not consistent, each jump's fresh noise changes the result; one jump has none."""
  model = PointMass(np.ones((B, L, M)), scale=0.5)
  noise = jax.random.normal(jax.random.PRNGKey(2), (B, L, M))
  ones = jnp.ones((B, L, 1))

  def run(steps, key):
    return solvers.consistency(lambda t, x: model(x, None, None, jnp.full((B,), t)), noise,
                               jnp.asarray(sample.timesteps(steps, None, epss=False)), jax.random.PRNGKey(key), ones)
  np.testing.assert_allclose(run(1, 0), run(1, 1))
  assert float(jnp.abs(run(2, 0) - run(2, 1)).max()) > 1e-2
  # one jump from t = 0 is x + v(x, 0) = x + 0.5·(1 − x)
  np.testing.assert_allclose(run(1, 0), noise + 0.5 * (1 - noise), atol=1e-6)


def test_sample_with_the_consistency_method_counts_one_evaluation_per_jump():
  model = PointMass(np.zeros((1, 16, M)))
  out = sample.sample(model, np.zeros((1, 4, M)), [4], np.zeros((1, 3), np.int32), [16], jax.random.PRNGKey(0),
                      nfe=2, cfg_strength=0.0, method="consistency")
  assert out.evaluations == 2
  np.testing.assert_allclose(out.mel[0, 4:], 0.0, atol=1e-5)


@pytest.mark.parametrize("solver", sorted(consistency.TEACHER_SOLVERS))
def test_loss_is_zero_when_the_student_is_consistent_along_the_teachers_trajectories(solver):
  mel, frames, text = batch()
  target = np.random.default_rng(4).normal(size=(L, M)).astype(np.float32)   # rows: conditioned and not
  exact = PointMass(target)
  distill = consistency.Distill(steps=8, teacher_solver=solver)
  loss, se_B, count_B = consistency.consistency_loss(exact, exact, mel, frames, text, jax.random.PRNGKey(0), distill)
  assert float(loss) < 1e-10 and (np.asarray(count_B) > 0).all()
  # a student off the teacher's trajectories is not consistent
  loss, _, _ = consistency.consistency_loss(PointMass(target, 0.5), exact, mel, frames, text, jax.random.PRNGKey(0),
                                            distill)
  assert float(loss) > 1e-2


def test_loss_counts_only_the_infilled_span_of_valid_frames():
  mel, frames, text = batch()
  _, se_B, count_B = consistency.consistency_loss(PointMass(np.zeros((L, M)), 0.5), PointMass(np.zeros((L, M))),
                                                  mel, frames, text, jax.random.PRNGKey(0))
  spans = np.asarray(count_B) / M
  assert (spans <= np.asarray(frames)).all() and (spans >= np.floor(0.7 * np.asarray(frames))).all()


def test_only_the_student_gets_a_gradient():
  """The target and the teacher's step are under stop_gradient: the gradient of the loss wrt the student's
  target-side input is the prediction's alone."""
  mel, frames, text = batch()

  def loss_of(student_target, teacher_target):
    student, teach = PointMass(student_target, 0.5), PointMass(teacher_target)
    return consistency.consistency_loss(student, teach, mel, frames, text, jax.random.PRNGKey(0))[0]
  g_student, g_teacher = jax.grad(loss_of, (0, 1))(jnp.zeros((L, M)), jnp.ones((L, M)))
  assert float(jnp.abs(g_student).max()) > 0
  np.testing.assert_array_equal(g_teacher, 0.0)


def test_the_teacher_is_a_frozen_copy_of_the_source_params():
  loaded = {"proj_out.kernel": np.ones(2), "embed.x": np.zeros(3)}
  both = consistency.with_teacher(loaded)
  assert set(both) == {"proj_out.kernel", "embed.x", "teacher.proj_out.kernel", "teacher.embed.x"}
  assert consistency.with_teacher(both) is both      # a distillation workdir's params stay as they are
  assert consistency.student_params(both).keys() == loaded.keys()
  cfg = dit_configs.get_config("consistency_tiny")
  assert family.param_group(("teacher", "blocks", 0), None) == "frozen"
  assert family.param_group(("blocks", 0), None) == "default"
  model = nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  student = nnx.state(nnx.eval_shape(lambda: family.build_model(dit_configs.get_config("tiny"), nnx.Rngs(0))),
                      nnx.Param)
  assert jax.tree.structure(params["teacher"]) == jax.tree.structure(student)


def test_the_consistency_method_samples_without_guidance_unless_asked():
  parser = argparse.ArgumentParser()
  dit_cli._sampling_flags(parser)  # pylint: disable=protected-access
  assert dit_cli.sampling(parser.parse_args(["--method", "consistency"])).cfg_strength == 0.0
  assert dit_cli.sampling(parser.parse_args(["--method", "consistency", "--cfg-strength", "1"])).cfg_strength == 1.0
  assert dit_cli.sampling(parser.parse_args([])).cfg_strength == 2.0


def test_a_distillation_run_needs_its_teacher(tmp_path):
  cfg = dit_configs.get_config("consistency_tiny")
  with pytest.raises(ValueError, match="init_from"):
    family.prepare(cfg, str(tmp_path / "run"))
  assert family.prepare(cfg, "") is cfg   # `jaxspeech plan` needs no teacher


def test_train_flops_count_the_teachers_and_the_targets_forwards():
  tiny, distilled = dit_configs.get_config("tiny"), dit_configs.get_config("consistency_tiny")
  # guided Euler teacher (2 rows), the target (1), the student's forward and backward (3)
  assert family.train_flops(distilled) == pytest.approx(family.train_flops(tiny) * 6 / 3)
  with distilled.unlocked():
    distilled.distill.teacher_solver = "heun"
  assert family.train_flops(distilled) == pytest.approx(family.train_flops(tiny) * 8 / 3)
