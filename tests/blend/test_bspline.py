"""The Cox–de Boor basis against SciPy, and p1 §3.2's 12×16 layer matrix."""

import numpy as np
import pytest
from scipy.interpolate import BSpline

from superpose.blend import bspline


def _scipy_basis(x, knots, degree):
  num_control = len(knots) - degree - 1
  return BSpline(knots, np.eye(num_control), degree, extrapolate=True)(x)


def _points(knots, degree, rng):
  lo, hi = knots[degree], knots[-degree - 1]
  return np.concatenate(
    [[lo, hi], np.unique(knots), rng.uniform(lo, hi, 37), np.linspace(lo, hi, 11)]
  )


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("extra_control", [0, 3, 12])
def test_matches_scipy_on_uniform_clamped_knots(degree, extra_control):
  num_control = degree + 1 + extra_control
  knots = bspline.clamped_knots(num_control, degree, lo=-0.5, hi=2.0)
  x = _points(knots, degree, np.random.default_rng(degree))
  got = bspline.basis(x, knots, degree)
  assert got.shape == (len(x), num_control) and got.dtype == np.float64
  np.testing.assert_allclose(got, _scipy_basis(x, knots, degree), atol=1e-6, rtol=0)
  np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_matches_scipy_on_arbitrary_knots(degree):
  rng = np.random.default_rng(10 + degree)
  interior = np.sort(rng.uniform(-1.0, 3.0, 9))
  interior = np.insert(interior, 4, interior[4])  # a double interior knot
  knots = np.concatenate([np.full(degree + 1, -1.0), interior, np.full(degree + 1, 3.0)])
  x = _points(knots, degree, rng)
  got = bspline.basis(x, knots, degree)
  np.testing.assert_allclose(got, _scipy_basis(x, knots, degree), atol=1e-6, rtol=0)
  np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)


def test_right_endpoint_is_last_basis_function():
  for degree in range(5):
    knots = bspline.clamped_knots(9, degree)
    row = bspline.basis(np.array([1.0]), knots, degree)[0]
    np.testing.assert_array_equal(row, np.eye(9)[-1])


def test_paper_knots_and_layer_matrix():
  knots = bspline.clamped_knots(16, 3)
  np.testing.assert_array_equal(
    knots, np.concatenate([np.zeros(3), np.linspace(0, 1, 14), np.ones(3)])
  )
  assert len(knots) == 20
  b = bspline.layer_basis(12)
  assert b.shape == (12, 16)
  np.testing.assert_array_equal(b[0], np.eye(16)[0])
  np.testing.assert_array_equal(b[11], np.eye(16)[15])
  np.testing.assert_allclose(b[1, 1:5], [0.137, 0.591, 0.271, 0.001], atol=1e-3)
  np.testing.assert_allclose(b[3, 3:7], [0.016, 0.450, 0.507, 0.027], atol=1e-3)
  np.testing.assert_allclose(b[5, 6:9], [0.216, 0.659, 0.125], atol=1e-3)
  np.testing.assert_allclose(b[10, 11:15], [0.001, 0.271, 0.591, 0.137], atol=1e-3)
  np.testing.assert_allclose(b.sum(1), 1.0, atol=1e-12)
  assert np.linalg.matrix_rank(b) == 12


def test_rejects_points_outside_the_domain():
  knots = bspline.clamped_knots(6, 3)
  with pytest.raises(ValueError, match="domain"):
    bspline.basis(np.array([0.5, 1.0 + 1e-9]), knots, 3)
  with pytest.raises(ValueError, match="control points"):
    bspline.clamped_knots(3, 3)
