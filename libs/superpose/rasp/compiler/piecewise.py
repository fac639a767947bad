"""A numerical S-Op read through a numerical function, as one ReLU MLP: ``y = f(x)`` on the grid of
x.

The MLP computes a piecewise-linear ``g`` with ``g(x_k) = f(x_k)`` at every grid point ``x_k`` of
the input's value set, flat outside the grid. Between two neighbours g is the straight line, unless
that line is steep for the function's scale (a jump: slope > ``max_relative_slope`` · y-range /
x-range); a jump is flat, rises over a quarter to a half of the gap around its middle, and is flat
again, so the float error on x (~1e-7) does not move the output at the grid points.

Why not tracr's sum of sharp steps (one pair of units per grid gap, each pair
``relu(L(x − t) + ½) − relu(L(x − t) − ½)`` with L ≈ 10 / the smallest gap): after ``frac_prevs``
the grid is every k/n, with gaps down to 1/n², so L reaches 10⁵ at max_seq_len 128 and each active
unit holds ~L·(x − t). The read-out sums ~n²/3 such pairs; its float32 dot product adds them in
several partial sums (the order depends on the matmul's tiling, hence on the padded batch width),
so the two halves of a pair need not cancel before the partial sums reach ~10⁴–10⁵, whose rounding
(~10⁻³) is the output's error: 2·x − 1 was off by 8.8e-3 at max_seq_len 32 and 0.14 at 128, and a
numerical selector width by 3 at 128. Here a straight stretch costs no units, and a knot's unit is
``relu(±(x − p))`` with weight = the change of slope there, on the side of a pivot knot that keeps
the largest possible partial sum (Σ |slope change| · distance) smallest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from superpose.rasp.compiler.bases import Dir, MLPBlock
from superpose.rasp.compiler.blocks import ONE_DIR, merge_close

MAX_RELATIVE_SLOPE = 16.0


def numerical_mlp(
  node: str,
  in_dir: Dir,
  out_dir: Dir,
  points: Sequence[tuple[float, float]],
  bos: Dir,
  max_relative_slope: float = MAX_RELATIVE_SLOPE,
) -> MLPBlock:
  """``points``: (x, f(x)) on the input's grid, distinct x. Biases ride on ``one − bos`` (0 at
  BOS)."""
  knots = simplify(knots_through(points, max_relative_slope))
  if not knots:
    return MLPBlock(node, 0, [], [])
  ps = [p for p, _ in knots]
  slopes = [0.0] + [(v1 - v0) / (p1 - p0) for (p0, v0), (p1, v1) in zip(knots, knots[1:])] + [0.0]
  changes = [
    b - a for a, b in zip(slopes, slopes[1:])
  ]  # at knot i: slope right of it − slope left of it
  z = pivot(ps, changes, slopes)

  w_in, w_out = [], []

  def unit(sign: float, p: float, weight: float):
    """``weight · relu(sign · (x − p))``, zero at BOS (where x and one − bos are both 0)."""
    if not weight:
      return
    h = len(w_out)
    w_in.append((in_dir, h, sign))
    if p:
      w_in.extend([(ONE_DIR, h, -sign * p), (bos, h, sign * p)])
    w_out.append((h, out_dir, weight))

  if knots[z][1]:  # g(pivot), on every position but BOS
    w_in.extend([(ONE_DIR, 0, 1.0), (bos, 0, -1.0)])
    w_out.append((0, out_dir, float(knots[z][1])))
  unit(1.0, ps[z], slopes[z + 1])  # right of the pivot: the slope there ...
  unit(-1.0, ps[z], -slopes[z])  # left of it: going left
  for i, (p, c) in enumerate(zip(ps, changes)):
    if i > z:
      unit(1.0, p, c)  # ... and each change of slope at a knot further right
    elif i < z:
      unit(-1.0, p, c)
  return MLPBlock(node, len(w_out), w_in, w_out)


def knots_through(
  points: Sequence[tuple[float, float]], max_relative_slope: float
) -> list[tuple[float, float]]:
  """The knots of g: every grid point, plus the start and end of the ramp inside each jump."""
  points = merge_close(sorted(((float(x), float(y)) for x, y in points), key=lambda p: p[0]))
  if len(points) < 2:
    return points
  ys = [y for _, y in points]
  x_range, y_range = points[-1][0] - points[0][0], max(ys) - min(ys)
  limit = max_relative_slope * y_range / x_range
  knots = [points[0]]
  for (x0, y0), (x1, y1) in zip(points, points[1:]):
    if abs(y1 - y0) > limit * (x1 - x0):
      start, end = ramp(x0, x1)
      knots += [(start, y0), (end, y1)]
    knots.append((x1, y1))
  return knots


def ramp(x0: float, x1: float) -> tuple[float, float]:
  """Where a jump rises: over a power-of-two width in (¼, ½] of the gap, around its middle, with
  both ends on a binary grid finer than the gap / 64. Ends with few significant bits are exact
  float32 weights, ``x − start`` and ``x − end`` then round alike (the ramp's two units differ by
  the exact width once both are active), and the ramp's slope is a power of two times the jump."""
  gap = x1 - x0
  half_width = 2.0 ** math.floor(math.log2(gap / 2)) / 2
  unit = 2.0 ** math.floor(math.log2(gap / 64))
  mid = round((x0 + x1) / 2 / unit) * unit
  return mid - half_width, mid + half_width


def simplify(knots: list[tuple[float, float]], rel_tol: float = 1e-9) -> list[tuple[float, float]]:
  """Drops knots that lie on the line through their kept neighbours, to ``rel_tol`` of the
  largest |value|.

  One pass: from the last kept knot, the line to a new end is accepted while it passes within the
  tolerance of every knot skipped on the way (their allowed slopes form an interval [lo, hi]).
  """
  if len(knots) < 3:
    return list(knots)
  tol = rel_tol * max(1.0, max(abs(v) for _, v in knots))
  kept, end = [knots[0]], knots[1]
  lo, hi = float("-inf"), float("inf")
  for p, v in knots[2:]:
    ap, av = kept[-1]
    d = end[0] - ap
    lo_with_end, hi_with_end = max(lo, (end[1] - tol - av) / d), min(hi, (end[1] + tol - av) / d)
    if lo_with_end <= (v - av) / (p - ap) <= hi_with_end:
      lo, hi = lo_with_end, hi_with_end  # skip ``end``
    else:
      kept.append(end)
      lo, hi = float("-inf"), float("inf")
    end = (p, v)
  kept.append(end)
  return kept


def pivot(ps: Sequence[float], changes: Sequence[float], slopes: Sequence[float]) -> int:
  """The knot z minimising the largest partial sum of the read-out: right of z the units of knots
  i ≥ z are active (each |change| · (x − p_i) ≤ |change| · (p_last − p_i)), left of it those of i ≤
  z."""
  n = len(ps)
  left = [0.0] * n  # Σ_{i<z} |change_i| · (p_i − p_0)
  for z in range(1, n):
    left[z] = left[z - 1] + abs(changes[z - 1]) * (ps[z - 1] - ps[0])
  right = [0.0] * n  # Σ_{i>z} |change_i| · (p_last − p_i)
  for z in range(n - 2, -1, -1):
    right[z] = right[z + 1] + abs(changes[z + 1]) * (ps[-1] - ps[z + 1])
  cost = [
    max(
      left[z] + abs(slopes[z]) * (ps[z] - ps[0]), right[z] + abs(slopes[z + 1]) * (ps[-1] - ps[z])
    )
    for z in range(n)
  ]
  return min(range(n), key=cost.__getitem__)
