"""B-spline bases on clamped knot vectors (Cox–de Boor), in float64 numpy.

The blends evaluate their splines at a fixed set of points, one per layer, so a basis is a constant
matrix computed once at construction; only the control points are learned. Agrees with
``scipy.interpolate.BSpline`` on the whole domain, the right endpoint included (p1 §7.2).
"""

from __future__ import annotations

import numpy as np


def clamped_knots(num_control: int, degree: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
  """Knots for ``num_control`` basis functions: ``lo`` and ``hi`` repeated degree+1 times, uniform
  inside.

  The vector is concat(lo·1_k, linspace(lo, hi, N − k + 1), hi·1_k), which for N = 16, k = 3 on [0,
  1] is p1 §3.2's 20-knot vector.
  """
  if degree < 0:
    raise ValueError(f"clamped_knots: degree must be >= 0, got {degree}")
  if num_control < degree + 1:
    raise ValueError(
      f"clamped_knots: a degree-{degree} spline needs >= {degree + 1} control points, got "
      f"{num_control}"
    )
  if not hi > lo:
    raise ValueError(f"clamped_knots: need lo < hi, got [{lo}, {hi}]")
  inner = np.linspace(lo, hi, num_control - degree + 1, dtype=np.float64)
  return np.concatenate([np.full(degree, lo, np.float64), inner, np.full(degree, hi, np.float64)])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den with 0/0 := 0, the Cox–de Boor convention for repeated knots."""
  num, den = np.broadcast_arrays(num, den)
  return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)


def basis(x: np.ndarray, knots: np.ndarray, degree: int) -> np.ndarray:
  """Values (len(x), num_control) of every basis function at ``x``; num_control = len(knots) −
  degree − 1.

  ``x`` must lie in the spline's domain [knots[degree], knots[num_control]]; rows sum to 1 there.
  """
  x = np.atleast_1d(np.asarray(x, np.float64))
  t = np.asarray(knots, np.float64)
  if x.ndim != 1 or t.ndim != 1:
    raise ValueError(f"basis: x and knots must be 1-D, got shapes {x.shape} and {t.shape}")
  if degree < 0:
    raise ValueError(f"basis: degree must be >= 0, got {degree}")
  num_control = len(t) - degree - 1
  if num_control < 1:
    raise ValueError(f"basis: {len(t)} knots are too few for degree {degree}")
  if np.any(np.diff(t) < 0):
    raise ValueError("basis: knots must be non-decreasing")
  lo, hi = t[degree], t[num_control]
  if not hi > lo:
    raise ValueError(f"basis: empty domain [{lo}, {hi}]")
  if np.any((x < lo) | (x > hi)):
    raise ValueError(f"basis: x outside the spline's domain [{lo}, {hi}]")

  # Degree 0: the indicator of the half-open span [t_i, t_{i+1}) holding x. x == hi lies in no such
  # span, which would make the last row all zero; it belongs to the last non-empty span instead
  # (closed on the right), as in SciPy.
  nonempty = np.nonzero(t[:num_control] < t[1 : num_control + 1])[0]
  span = np.minimum(np.searchsorted(t, x, side="right") - 1, nonempty[-1])
  values = np.zeros((len(x), len(t) - 1))
  values[np.arange(len(x)), span] = 1.0

  # N_{i,p}(x) = (x − t_i)/(t_{i+p} − t_i) · N_{i,p−1}(x) + (t_{i+p+1} − x)/(t_{i+p+1} − t_{i+1}) ·
  # N_{i+1,p−1}(x)
  for p in range(1, degree + 1):
    n = len(t) - 1 - p
    rise = _ratio(x[:, None] - t[None, :n], t[p : p + n] - t[:n])
    fall = _ratio(t[None, p + 1 : p + 1 + n] - x[:, None], t[p + 1 : p + 1 + n] - t[1 : 1 + n])
    values = rise * values[:, :n] + fall * values[:, 1 : n + 1]
  return values


def layer_basis(num_layers: int, num_control: int = 16, degree: int = 3) -> np.ndarray:
  """Basis at the normalised layer index x = linspace(0, 1, num_layers): p1 §3.2's 12×16 matrix by
  default."""
  if num_layers < 1:
    raise ValueError(f"layer_basis: num_layers must be >= 1, got {num_layers}")
  x = np.linspace(0.0, 1.0, num_layers)
  return basis(x, clamped_knots(num_control, degree), degree)
