"""Where a jitted step's time goes, per kind of work, from XLA's own per-operation trace.

``breakdown(fn, *args)`` compiles ``fn``, runs it under ``jax.profiler`` (a Perfetto trace), and
joins the trace's per-operation events (XLA:CPU emits one per thunk: a fusion, a dot, a copy, …;
named as in the optimized HLO) with the HLO that each one runs. Every operation gets

* a kind: ``matmul <spec>`` (a dot, labelled by the einsum it came from, e.g. ``btd,dhk->bthk``),
  ``softmax / exp`` (an exponential and a reduction), ``norm`` (an rsqrt), ``reduction``,
  ``layout`` (copies, transposes, slices, concatenations: no arithmetic), ``element-wise``;
* a phase from the JAX name stack in its metadata: ``forward`` (under ``jvp``), ``backward``
  (under ``transpose``), ``rest`` (outside differentiation: the optimizer update, guards, metrics —
  or all of a function that takes no gradient).

Container operations (while loops, calls, conditionals) are left out, their bodies' operations are
counted. An operation runs from its start event to its completion (the ``end: <name>`` event of
one XLA ran asynchronously); where operations overlap, each moment is shared equally among those
running, so the operations' times add up to ``busy_s``, the time during which some operation ran
(at most the wall time).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{\s*$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%([\w.\-, %]+)\}?")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONTAINERS = {"while", "call", "conditional", "async-start", "async-done"}
_LAYOUT = {
  "copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "dynamic-slice",
  "dynamic-update-slice", "concatenate", "pad", "parameter", "constant", "tuple",
  "get-tuple-element", "iota", "reverse", "gather", "scatter",
}  # fmt: skip


@dataclasses.dataclass
class Op:
  opcode: str
  op_name: str
  ops: set  # opcodes inside (a fusion's called computations, recursively)
  dot_name: str  # op_name of the first dot inside, if any


def parse_hlo(text: str) -> dict[str, Op]:
  """Every instruction of every computation: name → Op (the opcodes it runs, its JAX op_name)."""
  comps: dict[str, list[tuple[str, str, str, list[str]]]] = {}
  current = None
  for line in text.splitlines():
    m = _COMP.match(line)
    if m:
      current = comps.setdefault(m.group(1), [])
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      name, _, opcode, rest = m.groups()
      calls = [c.strip().lstrip("%") for g in _CALLS.findall(rest) for c in g.split(",")]
      op_name = (_OP_NAME.search(rest) or [None, ""])[1]
      current.append((name, opcode, op_name, calls))

  memo: dict[str, tuple[set, str]] = {}

  def inside(comp: str) -> tuple[set, str]:
    if comp not in memo:
      memo[comp] = (set(), "")
      ops, dot = set(), ""
      for _, opcode, op_name, calls in comps.get(comp, ()):
        ops.add(opcode)
        if opcode in ("dot", "convolution") and not dot:
          dot = op_name
        for c in calls:
          sub_ops, sub_dot = inside(c)
          ops |= sub_ops
          dot = dot or sub_dot
      memo[comp] = (ops, dot)
    return memo[comp]

  out = {}
  for instrs in comps.values():
    for name, opcode, op_name, calls in instrs:
      ops, dot = {opcode}, op_name if opcode in ("dot", "convolution") else ""
      if opcode not in _CONTAINERS:
        for c in calls:
          sub_ops, sub_dot = inside(c)
          ops |= sub_ops
          dot = dot or sub_dot
      out[name] = Op(opcode, op_name, ops, dot)
  return out


def kind(op: Op) -> str:
  if op.opcode in _CONTAINERS:
    return "container"
  if op.ops & {"dot", "convolution"}:
    spec = re.findall(r"\b([a-z]+,[a-z]+->[a-z]+)\b", op.dot_name)
    return f"matmul {spec[-1]}" if spec else "matmul"
  if op.opcode == "custom-call":
    return "custom call"
  if "exponential" in op.ops and op.ops & {"reduce", "reduce-window"}:
    return "softmax / exp"
  if "rsqrt" in op.ops or "sqrt" in op.ops and "reduce" in op.ops:
    return "norm"
  if op.ops & {"all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all"}:
    return "collective"
  if op.ops <= _LAYOUT | {"fusion"}:
    return "layout"
  if "reduce" in op.ops:
    return "reduction"
  return "element-wise"


def phase(op: Op) -> str:
  name = op.dot_name or op.op_name
  if "transpose(" in name:
    return "backward"
  if "jvp(" in name:
    return "forward"
  return "rest"


@dataclasses.dataclass
class Breakdown:
  wall_s: float  # wall time per call (without the profiler)
  busy_s: float  # time per call during which at least one operation ran (the union of their spans)
  by: dict[tuple[str, str], float]  # (kind, phase) → seconds per call
  top: list[
    tuple[str, str, float, str]
  ]  # (operation, kind, s per call, JAX op_name), largest first

  @property
  def op_s(self) -> float:
    """Summed operation time per call (equal to ``busy_s``: overlapping moments are shared out)."""
    return sum(self.by.values())

  def table(self, top: int = 12) -> str:
    """Markdown: kinds (summed over phases) with their phase split, then the largest operations."""
    kinds = collections.defaultdict(dict)
    for (k, p), s in self.by.items():
      kinds[k][p] = s
    rows = sorted(kinds.items(), key=lambda kv: -sum(kv[1].values()))
    lines = [
      f"wall {self.wall_s * 1e3:.1f} ms per call; some operation runs during "
      f"{self.busy_s * 1e3:.1f} ms (the rest: dispatch, loop control, waits)",
      "",
      "| kind | ms | share | forward / backward / rest ms |",
      "|---|---|---|---|",
    ]
    for k, ph in rows:
      s = sum(ph.values())
      split = " / ".join(f"{ph.get(p, 0.0) * 1e3:.1f}" for p in ("forward", "backward", "rest"))
      lines.append(f"| {k} | {s * 1e3:.1f} | {s / self.op_s:.1%} | {split} |")
    lines += ["", "| operation | kind | ms | from (JAX op_name) |", "|---|---|---|---|"]
    lines += [
      f"| {n} | {k} | {s * 1e3:.2f} | {src.removeprefix('jit(')[-70:]} |"
      for n, k, s, src in self.top[:top]
    ]
    return "\n".join(lines)


def _events(trace_dir: str) -> list[dict]:
  (path,) = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)
  data = json.load(gzip.open(path))
  return data["traceEvents"] if isinstance(data, dict) else data


def breakdown(fn, *args, calls: int = 3, advance=None) -> Breakdown:
  """Profile ``calls`` calls of the jitted ``fn(*args)``. ``advance(out) -> args`` feeds a call's
  outputs to the next (for steps that donate their state); by default the same args every call."""
  ops = parse_hlo(fn.lower(*args).compile().as_text())
  advance = advance or (lambda out: args)
  args = advance(jax.block_until_ready(fn(*args)))  # warm
  t0 = time.perf_counter()
  for _ in range(calls):
    args = advance(jax.block_until_ready(fn(*args)))
  wall = (time.perf_counter() - t0) / calls
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    for _ in range(calls):
      args = advance(jax.block_until_ready(fn(*args)))
    jax.profiler.stop_trace()
    events = _events(d)
  # An operation's event marks its start; XLA:CPU runs some asynchronously (dots on its thread pool,
  # parallel loop fusions) and marks their completion with an ``end: <name>`` event: a span runs
  # from the start to the later of the two ends.
  ends = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and e.get("name", "").startswith("end: "):
      ends[e["name"][5:]].append(e["ts"] + e.get("dur", 0))
  ends = {name: collections.deque(sorted(v)) for name, v in ends.items()}
  spans = []  # (start, stop, name), in order of start
  for e in sorted(events, key=lambda e: e.get("ts", 0)):
    name = e.get("name", "")
    if e.get("ph") == "X" and name in ops and "dur" in e and kind(ops[name]) != "container":
      stop = e["ts"] + e["dur"]
      pending = ends.get(name)
      while pending and pending[0] < e["ts"]:
        pending.popleft()
      if pending:
        stop = max(stop, pending.popleft())
      spans.append((e["ts"], stop, name))
  # Each moment of the trace is shared equally by the operations running then, so that the
  # operations' times add up to the busy time (an asynchronous operation's span also covers time
  # it spent queued behind others).
  per_op = collections.Counter()
  bounds = sorted({t for a, b, _ in spans for t in (a, b)})
  active, nxt, busy = [], 0, 0.0
  for t0, t1 in zip(bounds, bounds[1:]):
    while nxt < len(spans) and spans[nxt][0] <= t0:
      active.append(spans[nxt])
      nxt += 1
    active = [sp for sp in active if sp[1] > t0]
    if active:
      busy += t1 - t0
      for _, _, name in active:
        per_op[name] += (t1 - t0) * 1e-6 / calls / len(active)
  by = collections.Counter()
  top = []
  for name, s in per_op.items():  # containers have no span
    op = ops[name]
    k = kind(op)
    by[(k, phase(op))] += s
    top.append((name, k, s, op.op_name))
  top.sort(key=lambda t: -t[2])
  return Breakdown(wall, busy * 1e-6 / calls, dict(by), top)
