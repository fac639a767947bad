"""Weight constructions for each kind of S-Op (p2 §2.1), as sparse blocks over labelled directions.

Departures from tracr, each for a silent failure or a cleaner model:
- MLP biases ride on ``one − tokens:BOS`` rather than ``one``, so every MLP writes exactly zero at
  the BOS position (BOS stays clean for later selectors without tracr's separate BOS-cleanup units).
- A categorical→numerical Map with negative outputs gets a second, negated unit (tracr's single
  ReLU unit turns f(x) < 0 into 0, issue #24).
- Discretising MLPs with a categorical output use a step centred between grid points and a sharpness
  ``L`` of at least ``10 / smallest gap`` (tracr: a fixed L, wrong for fine grids such as selector
  widths ≥ 10, #7/#14); steps between equal outputs are left out; a None output writes nothing.
  Numerical outputs of a numerical input are ``piecewise.numerical_mlp`` (no float32 cancellation on
  fine grids).
- A Select whose queries or keys may be None scores them with the predicate, as the evaluator does
  (tracr: a None query matches nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from superpose.rasp.compiler.bases import ONE, AttentionHead, Dir, MLPBlock, sort_key

ONE_DIR = Dir(ONE)


def _call(f, *args):
  """``f(*args)``, or None where ``f`` raises an arithmetic error (as value-set inference skips
  them)."""
  try:
    return f(*args)
  except ArithmeticError:
    return None


def _bias(unit: int, weight: float, bos: Dir) -> list[tuple[Dir, int, float]]:
  """A bias of ``weight`` on ``unit`` at every position but BOS (where ``one − bos`` is 0)."""
  return [(ONE_DIR, unit, weight), (bos, unit, -weight)] if weight else []


def categorical_map(
  node: str, in_dirs: Sequence[Dir], out_dirs: Sequence[Dir], f: Callable
) -> MLPBlock:
  """One-hot → one-hot lookup table: one hidden unit per output value."""
  unit = {d.value: i for i, d in enumerate(out_dirs)}
  w_in = []
  for d in in_dirs:
    y = _call(f, d.value)
    if y is not None and y in unit:
      w_in.append((d, unit[y], 1.0))
  return MLPBlock(node, len(out_dirs), w_in, [(i, d, 1.0) for i, d in enumerate(out_dirs)])


def categorical_to_numerical_map(
  node: str, in_dirs: Sequence[Dir], out_dir: Dir, f: Callable
) -> MLPBlock:
  """One-hot → number: f(x) read through ReLU, plus a negated unit when some f(x) < 0."""
  values = [(d, float(y)) for d in in_dirs if (y := _call(f, d.value)) is not None]
  w_in = [(d, 0, y) for d, y in values if y > 0]
  w_out = [(0, out_dir, 1.0)]
  negatives = [(d, 1, -y) for d, y in values if y < 0]
  if negatives:
    w_in += negatives
    w_out.append((1, out_dir, -1.0))
  return MLPBlock(node, len(w_out), w_in, w_out)


def sequence_map(
  node: str,
  x_dirs: Sequence[Dir],
  y_dirs: Sequence[Dir],
  out_dirs: Sequence[Dir],
  f: Callable,
  bos: Dir,
) -> MLPBlock:
  """Two one-hots → one-hot: an AND unit relu(x_i + y_j − 1) per pair where f is defined."""
  unit_of = {d.value: i for i, d in enumerate(out_dirs)}
  w_in, w_out, h = [], [], 0
  for x in x_dirs:
    for y in y_dirs:
      z = _call(f, x.value, y.value)
      if z is None or z not in unit_of:
        continue
      w_in += [(x, h, 1.0), (y, h, 1.0)] + _bias(h, -1.0, bos)
      w_out.append((h, out_dirs[unit_of[z]], 1.0))
      h += 1
  return MLPBlock(node, h, w_in, w_out)


def linear_sequence_map(
  node: str, x_dir: Dir, y_dir: Dir, out_dir: Dir, a: float, b: float
) -> MLPBlock:
  """a·x + b·y through relu(±x), relu(±y)."""
  w_in = [(x_dir, 0, 1.0), (x_dir, 1, -1.0), (y_dir, 2, 1.0), (y_dir, 3, -1.0)]
  w_out = [(0, out_dir, a), (1, out_dir, -a), (2, out_dir, b), (3, out_dir, -b)]
  return MLPBlock(node, 4, w_in, w_out)


def discretising_mlp(
  node: str,
  in_dir: Dir,
  points: Sequence[tuple[float, object]],
  write: Callable[[object], list[tuple[Dir, float]]],
  bos: Dir,
  min_sharpness: float = 100.0,
) -> MLPBlock:
  """f of the nearest grid point: ``points`` are (x, f(x)) on the input grid; ``write(y)`` its
  output.

  Output = write(y_0)·start + Σ_k (write(y_k) − write(y_{k−1}))·step_k(x), where step_k rises from 0
  to 1 over a width 1/L centred on the midpoint t_k between grid points k−1 and k.
  """
  points = merge_close(sorted(points, key=lambda p: float(p[0])))
  if not points:
    return MLPBlock(node, 0, [], [])
  xs = [float(x) for x, _ in points]
  gaps = [b - a for a, b in zip(xs, xs[1:]) if b > a]
  sharpness = max(min_sharpness, 10.0 / min(gaps)) if gaps else min_sharpness
  w_in = _bias(0, 1.0, bos)
  w_out = [(0, d, w) for d, w in write(points[0][1])]
  h = 1
  for k in range(1, len(points)):
    (x0, y0), (x1, y1) = points[k - 1], points[k]
    if y0 == y1 and type(y0) is type(y1):
      continue
    t = (float(x0) + float(x1)) / 2
    w_in += [(in_dir, h, sharpness), (in_dir, h + 1, sharpness)]
    w_in += _bias(h, 0.5 - sharpness * t, bos) + _bias(h + 1, -0.5 - sharpness * t, bos)
    delta: dict[Dir, float] = {}
    for d, w in write(y1):
      delta[d] = delta.get(d, 0.0) + w
    for d, w in write(y0):
      delta[d] = delta.get(d, 0.0) - w
    for d, w in delta.items():
      if w:
        w_out += [(h, d, w), (h + 1, d, -w)]
    h += 2
  return MLPBlock(node, h, w_in, w_out)


def merge_close(points, rel: float = 1e-9):
  """Grid points equal up to float rounding (1/3 − 1/6 vs 1/6) are one point: the first one's f."""
  out = []
  for x, y in points:
    if out and abs(float(x) - float(out[-1][0])) <= rel * max(1.0, abs(float(x))):
      continue
    out.append((x, y))
  return out


def numerical_writer(out_dir: Dir):
  return lambda y: [(out_dir, float(y))] if y else []


def categorical_writer(out_dirs: Sequence[Dir]):
  by_value = {d.value: d for d in out_dirs}
  return lambda y: [(by_value[y], 1.0)] if y is not None and y in by_value else []


def select_head(
  node: str,
  q_dirs: Sequence[Dir],
  k_dirs: Sequence[Dir],
  predicate: Callable,
  ov: list[tuple[Dir, Dir, float]],
  bos: Dir,
  coldness: float,
  bos_weight: float,
  *,
  none_queries: bool = False,
  none_keys: bool = False,
) -> AttentionHead:
  """Attention for ``Select(keys, queries, predicate)``: matching keys score ``coldness``, BOS
  scores ``bos_weight·coldness`` (0.5: a fallback read only by rows with no match, giving the
  default; 1: BOS ties with the matches, as selector width needs), every other key 0.

  A None query or key (an S-Op that may be None: all of its directions 0) is a direction of its own,
  ``one − tokens:BOS − Σ its value directions`` (1 where it is None, 0 at BOS and elsewhere), scored
  with ``predicate(key, None)`` etc. as the evaluator does; where the predicate raises on None (as
  ``Comparison`` does) it selects nothing, and ``CompiledModel.apply`` refuses such inputs.
  """
  queries = [(q.value, [(q, 1.0)]) for q in q_dirs]
  keys = [(k.value, [(k, 1.0)]) for k in k_dirs]
  if none_queries:
    queries.append((None, _none_indicator(q_dirs, bos)))
  if none_keys:
    keys.append((None, _none_indicator(k_dirs, bos)))
  qk = []
  for q_value, q_terms in queries:
    for k_value, k_terms in keys:
      if _selects(node, predicate, k_value, q_value):
        qk += [(q, k, coldness * a * b) for q, a in q_terms for k, b in k_terms]
  qk.append((ONE_DIR, bos, bos_weight * coldness))
  return AttentionHead(node, qk, ov)


def _none_indicator(dirs: Sequence[Dir], bos: Dir) -> list[tuple[Dir, float]]:
  return [(ONE_DIR, 1.0), (bos, -1.0)] + [(d, -1.0) for d in dirs]


def _selects(node: str, predicate: Callable, key, query) -> bool:
  try:
    return bool(predicate(key, query))
  except Exception as e:
    if key is None or query is None:
      return False
    e.add_note(f"while compiling the selector of {node}: predicate(key={key!r}, query={query!r})")
    raise


def selector_width_grid(max_seq_len: int) -> list[tuple[float, int]]:
  """The attention output 1/(w+1) for every width w, paired with w."""
  return [(1.0 / (w + 1), w) for w in range(max_seq_len + 1)]


def check_finite(block) -> None:
  weights = (
    [w for *_, w in (block.w_in + block.w_out)]
    if isinstance(block, MLPBlock)
    else [w for *_, w in (block.qk + block.ov)]
  )
  bad = [w for w in weights if not math.isfinite(w)]
  if bad:
    raise ValueError(f"{block.node}: non-finite weights {bad[:4]} (a function returned inf or nan)")


__all__ = [
  "categorical_map",
  "categorical_to_numerical_map",
  "sequence_map",
  "linear_sequence_map",
  "discretising_mlp",
  "numerical_writer",
  "categorical_writer",
  "select_head",
  "selector_width_grid",
  "check_finite",
  "sort_key",
]
