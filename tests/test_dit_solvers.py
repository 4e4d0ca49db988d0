"""The ODE solvers against scipy's on a nonlinear, time-dependent flow: each converges at its order, and the
adaptive Dormand–Prince lands within its tolerance (float64 reference, float32 solvers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from jaxspeech.dit import solvers

X0 = np.linspace(-1.5, 1.5, 7)


def flow(t, x):
  return jnp.sin(3 * t) * x - 0.5 * x ** 3 + t


def exact(x0=X0, t0=0.0, t1=1.0):
  return solve_ivp(lambda t, x: np.sin(3 * t) * x - 0.5 * x ** 3 + t, (t0, t1), x0, method="DOP853", rtol=1e-12,
                   atol=1e-12).y[:, -1]


def fixed_error(method: str, steps: int) -> float:
  times = jnp.linspace(0, 1, steps + 1)
  x = jax.jit(lambda x: solvers.fixed(flow, x, times, method))(jnp.asarray(X0, jnp.float32))
  return float(np.abs(np.asarray(x, np.float64) - exact()).max())


@pytest.mark.parametrize("method", solvers.FIXED)
def test_each_fixed_grid_solver_converges_at_its_order(method):
  coarse, fine = fixed_error(method, 16), fixed_error(method, 32)
  order = np.log2(coarse / fine)
  assert abs(order - solvers.ORDER[method]) < 0.35, (method, coarse, fine, order)


@pytest.mark.parametrize("method", solvers.FIXED)
def test_the_order_holds_on_f5s_sway_warped_grid(method):
  """Steps of uneven size (sway −1: small at the start, large at the end), AB2's variable-step weights too."""
  def error(steps):
    t = np.linspace(0, 1, steps + 1)
    times = jnp.asarray(t - (np.cos(np.pi / 2 * t) - 1 + t), jnp.float32)
    return float(np.abs(np.asarray(solvers.fixed(flow, jnp.asarray(X0, jnp.float32), times, method)) - exact()).max())
  order = np.log2(error(16) / error(32))
  assert abs(order - solvers.ORDER[method]) < 0.35, (method, order)


@pytest.mark.parametrize("rtol,atol", [(1e-3, 1e-4), (1e-5, 1e-6)])
def test_dopri5_lands_within_its_tolerance_in_as_few_steps_as_scipys(rtol, atol):
  x, nfe = jax.jit(lambda x: solvers.dopri5(flow, x, rtol=rtol, atol=atol))(jnp.asarray(X0, jnp.float32))
  want = exact()
  assert np.abs(np.asarray(x, np.float64) - want).max() <= 10 * (atol + rtol * np.abs(want).max())
  theirs = solve_ivp(lambda t, x: np.sin(3 * t) * x - 0.5 * x ** 3 + t, (0, 1), X0, method="RK45", rtol=rtol,
                     atol=atol)
  assert int(nfe) <= 1.5 * theirs.nfev + 6, (int(nfe), theirs.nfev)


def test_dopri5_weights_keep_padding_out_of_its_error():
  """A fast-oscillating padded element would force small steps; weighted out, the steps are those of the rest."""
  x0 = jnp.asarray(np.append(X0, 0.0), jnp.float32)
  stiff = lambda t, x: flow(t, x).at[-1].set(30 * jnp.cos(60 * t))  # noqa: E731
  weight = jnp.asarray(np.append(np.ones_like(X0), 0.0), jnp.float32)
  _, alone = solvers.dopri5(flow, jnp.asarray(X0, jnp.float32))
  x, padded = solvers.dopri5(stiff, x0, weight=weight)
  _, unweighted = solvers.dopri5(stiff, x0)
  assert int(padded) == int(alone) < int(unweighted) / 2, (int(padded), int(alone), int(unweighted))
  np.testing.assert_allclose(np.asarray(x[:-1]), exact(), atol=1e-2)


def test_a_solve_that_needs_more_steps_stops_at_max_steps():
  _, nfe = solvers.dopri5(flow, jnp.asarray(X0, jnp.float32), rtol=1e-9, atol=1e-10, max_steps=4)
  assert int(nfe) == 6 * 4 + 2
