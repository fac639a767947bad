"""What ``launch.plan`` reads out of a compiled train step, and how it prints it.

* :func:`collectives`: every all-reduce / all-gather / reduce-scatter / all-to-all /
  collective-permute in the compiled (SPMD-partitioned, per-device) HLO text, with the bytes it
  moves per step. Collectives inside ``while`` bodies (scanned layers, gradient accumulation) are
  multiplied by the loop's ``known_trip_count``; each is classed ICI (all its devices in one slice)
  or DCN (spanning slices).
* :data:`CHIPS`: the per-chip figures the fit table and the step-time estimate use (stated in the
  output).
* :func:`estimate`: step time per chip from model FLOPs / bf16 peak and collective traffic /
  bandwidth.
* :func:`markdown`: one plan (or many, for ``--report``) as Markdown.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from superpose.train.flops import PEAK_FLOPS

GPU_NODE = 8  # GPUs per NVLink node
GiB = 1024**3
MiB = 1024**2


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_gib: float  # HBM per chip
  peak_tflops: float  # dense bf16 peak per chip (superpose.train.flops.PEAK_FLOPS)
  fast_gbs: float  # bidirectional bandwidth per chip inside a slice / NVLink domain, GB/s
  slow_gbs: float  # per-chip bandwidth across slices (DCN) / nodes (InfiniBand), GB/s
  domain: int | None  # chips per fast domain (None: the whole slice, TPU ICI; 8: one GPU node)
  source: str


def _peak(name: str) -> float:
  return PEAK_FLOPS[name] / 1e12


# HBM and bf16 peaks (superpose.train.flops.PEAK_FLOPS) as the brief and the Cloud TPU / NVIDIA data
# sheets give them. ICI: the Cloud TPU docs' "bidirectional ICI bandwidth per chip" (v5e 400, v6e
# 800, v5p 1200 GB/s; v4 from its 2,400 Gbps interchip figure on the same Gbps/4 scale as v5p's
# 4,800 Gbps = 1,200 GB/s). DCN: v5p 50 Gbps per chip (docs); v5e 2×100 Gbps NICs per 8-chip host =
# 25 Gbps per chip (docs); v4 and v6e: not in the docs read, assumed 50 and 25 Gbps like v5p and
# v5e. GPUs: NVLink 4 900 GB/s bidirectional within an 8-GPU node, one 400 Gb/s InfiniBand NIC per
# GPU across nodes.
CHIPS: dict[str, Chip] = {
  "v4": Chip(
    "TPU v4",
    32,
    _peak("TPU v4"),
    600,
    50 / 8,
    None,
    "ICI 600 GB/s (2,400 Gbps/4), DCN 50 Gbps assumed",
  ),
  "v5e": Chip(
    "TPU v5e", 16, _peak("TPU v5e"), 400, 25 / 8, None, "ICI 400 GB/s, DCN 25 Gbps/chip (docs)"
  ),
  "v5p": Chip(
    "TPU v5p", 95, _peak("TPU v5p"), 1200, 50 / 8, None, "ICI 1,200 GB/s, DCN 50 Gbps/chip (docs)"
  ),
  "v6e": Chip(
    "TPU v6e", 32, _peak("TPU v6e"), 800, 25 / 8, None, "ICI 800 GB/s (docs), DCN 25 Gbps assumed"
  ),
  "h100": Chip(
    "NVIDIA H100",
    80,
    _peak("NVIDIA H100"),
    900,
    400 / 8,
    8,
    "NVLink 900 GB/s in 8-GPU nodes, IB 400 Gb/s/GPU",
  ),
  "h200": Chip(
    "NVIDIA H200",
    141,
    _peak("NVIDIA H200"),
    900,
    400 / 8,
    8,
    "NVLink 900 GB/s in 8-GPU nodes, IB 400 Gb/s/GPU",
  ),
}

# MaxText's published MFU for comparable dense models (../shared/papers/infra_anchors.md §4.1).
MAXTEXT_MFU = {
  "8b": "Llama3.1-8B, v6e-256, seq 8192: 45.46 % (7,207 tok/s/chip); Llama2-7B, H100: ≈50 % (1 "
  "node) … 38 % (16)",
  "none": "not available (smallest MaxText model with a published MFU: 7–8B)",
}

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
  "f8e4m3fn": 1,
  "f8e5m2": 1,
}
_SHAPE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")


def shape_bytes(text: str) -> int:
  """Bytes of an HLO shape string (a tuple counts all its elements)."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _iota(spec: str) -> np.ndarray:
  """``[4,2]T(1,0)`` or ``[8]``: the flat device-id order of an iota tile assignment."""
  m = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", spec.strip())
  dims = [int(x) for x in m.group(1).split(",")]
  ids = np.arange(math.prod(dims)).reshape(dims)
  if m.group(2):
    ids = ids.transpose([int(x) for x in m.group(2).split(",")])
  return ids.reshape(-1)


def _groups(attrs: str, num_devices: int) -> list[list[int]]:
  """Replica groups of a collective, in the formats XLA prints: explicit ``{{0,1},{2,3}}``, iota
  ``[2,4]<=[4,2]T(1,0)``, mesh ``mesh['axis_0'=2,'axis_1'=4], device_ids=([8]) {'axis_1'}`` and
  ``source_target_pairs={{0,1},...}``. Unknown formats count as one group of every device."""
  m = re.search(r"source_target_pairs=\{(.*?)\}\}", attrs)
  if m:
    return [[int(x) for x in pair.split(",")] for pair in re.findall(r"\{(\d+,\d+)", m.group(0))]
  m = re.search(
    r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(([^)]*\)?)\))?\s*\{([^}]*)\}", attrs
  )
  if m:
    axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
    names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
    ids = _iota(m.group(2)) if m.group(2) else np.arange(math.prod(sizes))
    ids = ids.reshape(sizes)
    grouped = [names.index(a) for a in re.findall(r"'(\w+)'", m.group(3))]
    rest = [i for i in range(len(sizes)) if i not in grouped]
    size = math.prod(sizes[i] for i in grouped)
    return ids.transpose(rest + grouped).reshape(-1, size).tolist()
  m = re.search(r"replica_groups=\[([\d,]+)\]<=(\[[\d,]+\](?:T\([\d,]+\))?)", attrs)
  if m:
    shape = [int(x) for x in m.group(1).split(",")]
    return _iota(m.group(2)).reshape(shape[0], -1).tolist()
  m = re.search(r"replica_groups=\{(.*?)\}(?:,|$)", attrs)
  if m and m.group(1).strip("{} "):
    return [
      [int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", m.group(0) + "}")
    ]
  return [list(range(num_devices))]


def _ring(kind: str, n: int, size: float) -> float:
  """Bytes one device sends in a ring collective of ``n`` members on a buffer of ``size`` bytes."""
  frac = (n - 1) / n if n > 1 else 0.0
  return {
    "all-reduce": 2 * frac * size,
    "all-gather": frac * size,
    "reduce-scatter": frac * size,
    "all-to-all": frac * size,
    "collective-permute": float(size),
  }[kind]


def parse_hlo(text: str) -> tuple[dict[str, list[tuple[str, str, str, str]]], str]:
  """{computation: [(name, result shape, opcode, rest of line)]} and the entry computation's
  name."""
  comps: dict[str, list] = {}
  entry, current = "", None
  for line in text.splitlines():
    m = _COMP.match(line)
    if m and "=" not in line.split("(")[0]:
      current = m.group(1)
      comps[current] = []
      if line.startswith("ENTRY"):
        entry = current
      continue
    if current is None:
      continue
    m = _INSTR.match(line)
    if m:
      comps[current].append((m.group(1), m.group(2), m.group(3), m.group(4)))
  return comps, entry


def _multiplicities(comps, entry: str) -> dict[str, int]:
  """How many times each computation runs per execution of the entry (while bodies × trip count)."""
  callers: dict[str, list[tuple[str, int]]] = {}
  for name, body in comps.items():
    for _, _, op, rest in body:
      n = 1
      if op == "while":
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
        n = int(trips.group(1)) if trips else 1
      called = re.findall(r"(?:to_apply|calls|body|condition)=%([\w.\-]+)", rest)
      for group in re.findall(r"branch_computations=\{([^}]*)\}", rest):
        called += re.findall(r"%([\w.\-]+)", group)
      for c in called:
        callers.setdefault(c, []).append((name, n))
  memo: dict[str, int] = {entry: 1}

  def mult(c: str, depth: int = 0) -> int:
    if c not in memo:
      memo[c] = 0 if depth > 64 else sum(mult(p, depth + 1) * n for p, n in callers.get(c, ()))
    return memo[c]

  return {c: mult(c) for c in comps}


def collectives(
  hlo_text: str, device_order: Sequence[int], devices_per_slice: int, f32_as_bf16: bool = False
) -> list[dict[str, Any]]:
  """Collectives of a compiled per-device HLO module, with per-step counts and bytes.

  ``device_order[i]`` is the device id of SPMD partition i (the mesh's flat device order) and
  devices with ids in the same block of ``devices_per_slice`` share a slice (fake slices: contiguous
  blocks). Bytes: ``bytes`` is the larger of the op's result and operand buffers per device;
  ``traffic`` is what one device sends (ring algorithms, :func:`_ring`): all-reduce 2(n−1)/n·size,
  all-gather and reduce-scatter (n−1)/n·the gathered size, all-to-all (n−1)/n·size,
  collective-permute the full buffer; a group spanning k slices is split hierarchically into
  ``ici_traffic`` and ``dcn_traffic``. ``f32_as_bf16``: XLA:CPU promotes bf16 collectives to f32
  (its runtime reduces in f32); for a model whose parameters and compute are bf16, ``traffic_bf16``
  counts f32 collectives at 2 bytes per element, as an accelerator would move them.
  """
  comps, entry = parse_hlo(hlo_text)
  mult = _multiplicities(comps, entry)
  sizes = {name: shape_bytes(shape) for body in comps.values() for name, shape, _, _ in body}
  out: dict[tuple, dict] = {}
  for comp, body in comps.items():
    if not mult.get(comp):
      continue
    for name, shape, op, rest in body:
      kind = op.removesuffix("-start")
      if kind not in KINDS:
        continue
      result = shape_bytes(shape)
      if op.endswith("-start") and shape.startswith(
        "("
      ):  # async start: (operand, result, ...) tuple
        parts = re.findall(r"[a-z0-9]+\[[0-9,]*\]", shape)
        result = max((shape_bytes(p) for p in parts), default=0)
      operands = sum(sizes.get(o, 0) for o in re.findall(r"%([\w.\-]+)", rest.split(")")[0]))
      size = max(result, operands)
      groups = _groups(rest, len(device_order))
      n = max(len(g) for g in groups) if op != "collective-permute" else 2
      ids = [[device_order[i] if i < len(device_order) else i for i in g] for g in groups]
      slices_per_group = max(len({d // devices_per_slice for d in g}) for g in ids)
      dcn = slices_per_group > 1
      node = all(len({d // GPU_NODE for d in g}) == 1 for g in ids)  # inside one 8-GPU NVLink node
      # Hierarchical collectives (what XLA:TPU does across slices): the ICI part among the m members
      # of a group inside one slice on the full buffer, the DCN part among k slices on 1/m of it.
      k = slices_per_group if kind != "collective-permute" else (2 if dcn else 1)
      per_slice = max(1, n // k) if kind != "collective-permute" else 1
      ici_traffic = _ring(kind, per_slice, size) if per_slice > 1 else 0.0
      dcn_traffic = _ring(kind, k, size / per_slice) if dcn else 0.0
      if kind == "collective-permute":
        ici_traffic, dcn_traffic = (0.0, float(size)) if dcn else (float(size), 0.0)
      traffic = ici_traffic + dcn_traffic
      dtype = (_SHAPE.findall(shape) or [("?", "")])[0][0]
      key = (kind, dtype, size, n, dcn, node)
      row = out.setdefault(
        key,
        {
          "kind": kind,
          "dtype": dtype,
          "bytes": size,
          "group": n,
          "network": "dcn" if dcn else "ici",
          "slices": k,
          "gpu_node_local": node,
          "count": 0,
          "traffic": 0.0,
          "ici_traffic": 0.0,
          "dcn_traffic": 0.0,
          "traffic_bf16": 0.0,
          "ici_traffic_bf16": 0.0,
          "dcn_traffic_bf16": 0.0,
        },
      )
      half = 0.5 if f32_as_bf16 and dtype == "f32" else 1.0
      c = mult[comp]
      row["count"] += c
      for name, value in (
        ("traffic", traffic),
        ("ici_traffic", ici_traffic),
        ("dcn_traffic", dcn_traffic),
      ):
        row[name] += value * c
        row[f"{name}_bf16"] += value * c * half
  rows = sorted(out.values(), key=lambda r: -r["traffic"])
  for r in rows:
    r["bytes_per_step"] = r["bytes"] * r["count"]
  return rows


def summarise(rows: Iterable[Mapping]) -> dict[str, dict[str, float]]:
  """{kind: {count, bytes_per_step, traffic...}} and the same summed over every kind under
  'total'."""
  keys = (
    "count",
    "bytes_per_step",
    "traffic",
    "ici_traffic",
    "dcn_traffic",
    "traffic_bf16",
    "ici_traffic_bf16",
    "dcn_traffic_bf16",
  )
  out: dict[str, dict[str, float]] = {}
  total = dict.fromkeys(keys, 0.0)
  for r in rows:
    s = out.setdefault(r["kind"], dict.fromkeys(keys, 0.0))
    for k in keys:
      s[k] += r[k]
      total[k] += r[k]
  out["total"] = total
  return out


def estimate(
  flops_per_device: float, rows: Iterable[Mapping], bf16: bool = True
) -> dict[str, dict[str, float]]:
  """Per chip: compute time (model FLOPs / bf16 peak) and communication time (each collective's
  traffic / the bandwidth of the network it crosses: TPU ICI within a slice, DCN across; GPU NVLink
  within an 8-GPU node, InfiniBand across), and the step-time bounds max(compute, comm) .. compute +
  comm."""
  rows = list(rows)
  suffix = "_bf16" if bf16 else ""
  out = {}
  for name, chip in CHIPS.items():
    if chip.domain:  # GPUs: NVLink only inside a node; everything else over InfiniBand
      fast = sum(r["traffic" + suffix] for r in rows if r["gpu_node_local"])
      slow = sum(r["traffic" + suffix] for r in rows) - fast
    else:
      fast = sum(r["ici_traffic" + suffix] for r in rows)
      slow = sum(r["dcn_traffic" + suffix] for r in rows)
    compute = flops_per_device / (chip.peak_tflops * 1e12)
    comm = fast / (chip.fast_gbs * 1e9) + slow / (chip.slow_gbs * 1e9)
    out[name] = {
      "compute_s": compute,
      "comm_s": comm,
      "fast_bytes": fast,
      "slow_bytes": slow,
      "step_s_overlap": max(compute, comm),
      "step_s_serial": compute + comm,
    }
  return out


def fits(peak_bytes: int) -> dict[str, dict[str, Any]]:
  return {
    k: {
      "hbm_gib": c.hbm_gib,
      "used": peak_bytes / (c.hbm_gib * GiB),
      "fits": peak_bytes <= c.hbm_gib * GiB,
    }
    for k, c in CHIPS.items()
  }


def fmt_bytes(n: float) -> str:
  for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
    if abs(n) >= size:
      return f"{n / size:.2f} {unit}"
  return f"{int(n)} B"


def fmt_s(s: float) -> str:
  return f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.1f} s"


def markdown(plan: Mapping[str, Any], chip: str = "v5p") -> str:
  """One plan as Markdown: memory, sharding holes, collectives, fit table, step-time estimate."""
  m, p = plan["memory"], plan
  lines = [
    f"### {p['config']} on {p['devices']} fake CPU devices (mesh {p['mesh_text']})",
    "",
    f"{p['params']:,} parameters ({fmt_bytes(p['param_bytes_total'])}), trainer `{p['trainer']}`, "
    f"batch {p['batch_shapes_text']}, compile {p['compile_s']:.1f} s (lower {p['lower_s']:.1f} s).",
    "",
    "| per device (compiled.memory_analysis) | bytes |",
    "|---|---|",
    f"| parameters | {fmt_bytes(m['params'])} |",
    f"| optimizer state | {fmt_bytes(m['opt_state'])} |",
    f"| batch + step counter | {fmt_bytes(m['batch'])} |",
    f"| arguments (= the three above) | {fmt_bytes(m['argument'])} |",
    f"| temp / activations | {fmt_bytes(m['temp'])} |",
    f"| outputs not aliased to donated inputs | {fmt_bytes(m['output'] - m['alias'])} |",
    f"| **peak estimate** (arguments + temp + unaliased outputs) | **{fmt_bytes(m['peak'])}** |",
    "",
  ]
  w = p["largest_whole"]
  if w:
    flag = " — **sharding hole (> 1 MiB)**" if w["bytes"] > MiB else " (≤ 1 MiB: fine)"
    lines += [
      f"Largest parameter/optimizer tensor held whole on a device: `{w['path']}` {w['shape']} "
      f"{w['dtype']}, {fmt_bytes(w['bytes'])}{flag}.",
      "",
    ]
  else:
    lines += ["Every parameter and optimizer tensor is sharded (none held whole).", ""]
  if p["collectives"]:
    lines += [
      "| collective | dtype | group | network | count/step | bytes each | bytes/step | "
      "sent/device/step |",
      "|---|---|---|---|---|---|---|---|",
    ]
    for r in p["collectives"][:12]:
      lines.append(
        f"| {r['kind']} | {r['dtype']} | {r['group']} | {r['network']} | {r['count']} | "
        f"{fmt_bytes(r['bytes'])} | {fmt_bytes(r['bytes_per_step'])} | {fmt_bytes(r['traffic'])} |"
      )
    if len(p["collectives"]) > 12:
      lines.append(f"| … {len(p['collectives']) - 12} more kinds/sizes | | | | | | | |")
    t = p["collective_summary"]["total"]
    bf16_use = (
      "used for the step time: bf16 model"
      if p["f32_as_bf16"]
      else "not used: the model is not all-bf16"
    )
    lines += [
      "",
      f"Collectives per step per device: {int(t['count'])} ops, {fmt_bytes(t['bytes_per_step'])} "
      f"of buffers, {fmt_bytes(t['ici_traffic'])} sent over ICI and {fmt_bytes(t['dcn_traffic'])} "
      f"over DCN as compiled; {fmt_bytes(t['ici_traffic_bf16'])} / "
      f"{fmt_bytes(t['dcn_traffic_bf16'])} with f32 collectives counted at bf16 ({bf16_use}). "
      "XLA:CPU also leaves FSDP gradient reductions as all-reduce (+ slice) where XLA:TPU/GPU "
      "form reduce-scatter (half the traffic), so comm times are upper-side estimates.",
      "",
    ]
  else:
    lines += ["No collectives (one device, or nothing sharded).", ""]
  lines += [
    f"Model FLOPs per step {p['flops_per_step']:.3e} (superpose.train.flops, causal-halved), "
    f"{p['flops_per_device']:.3e} per device; XLA's cost_analysis of the per-device program "
    f"{p['xla_flops_per_device']:.3e} (counts scanned layer bodies once and includes remat "
    "recompute).",
    "",
    "| chip | HBM | uses | fits | bf16 peak | compute | comm | step (overlap … serial) | "
    "bandwidths |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for k, c in CHIPS.items():
    f, e = p["fits"][k], p["estimate"][k]
    name = f"**{c.name}**" if k == chip else c.name
    lines.append(
      f"| {name} | {c.hbm_gib:g} GiB | {f['used']:.0%} | {'yes' if f['fits'] else '**no**'} | "
      f"{c.peak_tflops:g} TFLOP/s | {fmt_s(e['compute_s'])} | {fmt_s(e['comm_s'])} | "
      f"{fmt_s(e['step_s_overlap'])} … {fmt_s(e['step_s_serial'])} | {c.source} |"
    )
  lines += ["", p["verdict"], ""]
  lines += [f"Note: {n}" for n in p.get("notes", ())]
  return "\n".join(lines) + ("\n" if p.get("notes") else "")


def verdict(plan: Mapping[str, Any], chip: str) -> str:
  c, f, m = CHIPS[chip], plan["fits"][chip], plan["memory"]
  parts = (
    f"parameters {fmt_bytes(m['params'])} + optimizer {fmt_bytes(m['opt_state'])} + batch "
    f"{fmt_bytes(m['batch'])} "
    f"+ temp {fmt_bytes(m['temp'])} + unaliased outputs {fmt_bytes(m['output'] - m['alias'])}"
  )
  word = "FITS" if f["fits"] else "DOES NOT FIT"
  return (
    f"**{c.name} × {plan['devices']} chips: {word}** — {parts} = {fmt_bytes(m['peak'])} per chip, "
    f"{f['used']:.0%} of "
    f"{c.hbm_gib:g} GiB (CPU compile: XLA:TPU schedules and fuses differently, and the CPU backend "
    "keeps some "
    "bf16 buffers in f32, so treat temp as an estimate)."
  )


def report_markdown(
  result: Mapping[str, Any], configs: Sequence[str], md_path: str, wall_s: float, date: str
) -> str:
  """The ``--report`` file: header (date, versions, devices, figures), one summary row per plan,
  then each plan."""
  v = result["versions"]
  lines = [
    "# Scale plan: the real train step compiled for N devices",
    "",
    f"Generated {date} by `python -m launch.plan --report {md_path}` in {wall_s / 60:.1f} min on a "
    "2-core CPU "
    f"(every row below is a compile that ran); jax {v.get('jax')}, flax {v.get('flax')}, Python "
    f"{v.get('python')}.",
    "Devices: **fake CPU devices** (`XLA_FLAGS=--xla_force_host_platform_device_count=N`; libtpu, "
    "which "
    "`jax.experimental.topologies` needs for a TPU AOT compile, is not installed in the shared "
    "venv). A device "
    "is a chip: 256 v5p chips is the Cloud accelerator type v5p-512 (2 TensorCores per chip). "
    "Memory is XLA:CPU's "
    "`compiled.memory_analysis()` of the per-device SPMD program: parameter and optimizer bytes "
    "follow exactly "
    "from the shardings; temp/activation bytes are CPU-backend estimates (XLA:TPU fuses and "
    "schedules "
    "differently, XLA:CPU keeps some bf16 math in f32, and attention is the XLA path, which "
    "materialises "
    "the T×T scores that splash/cuDNN attention would not).",
    "Collectives: read from the compiled HLO, loops × trip count. XLA:CPU promotes bf16 "
    "collectives to f32 "
    "and leaves FSDP gradient reductions as all-reduce where XLA:TPU/GPU form reduce-scatter, so "
    "the bytes "
    "are upper-side; for all-bf16 models the step time counts f32 collectives at bf16. Groups that "
    "span slices "
    "are split hierarchically (ICI inside each slice, DCN on the slice's share).",
    "",
    "Chip figures: "
    + "; ".join(
      f"{c.name} {c.hbm_gib:g} GiB, {c.peak_tflops:g} TFLOP/s bf16, {c.source}"
      for c in CHIPS.values()
    )
    + ".",
    "Step time per chip: compute = model FLOPs per device (superpose.train.flops, causal-halved) / "
    "bf16 peak, "
    "i.e. at 100 % MFU; comm = bytes each device sends per step / bandwidth; the step lies between "
    "max(compute, comm) (full overlap, shown) and their sum (in each plan below). "
    "MaxText MFU for comparable sizes from ../shared/papers/infra_anchors.md §4.1.",
    "",
    "| config | devices | mesh | params | params/dev | opt/dev | temp/dev | peak/dev | largest "
    "whole | "
    "collective bytes/step | sent ICI / DCN | v5p step (overlap) | fits v4 · v5e · v5p · v6e · "
    "H100 · H200 | "
    "compile | MaxText MFU, comparable size |",
    "|" + "---|" * 15,
  ]
  details = []
  for config, plan in zip(configs, result["plans"]):
    if "error" in plan:
      lines.append(
        f"| `{config}` | {plan['devices']} | — | **failed**: {plan['error']} |" + " |" * 11
      )
      continue
    m, w, t = plan["memory"], plan["largest_whole"], plan["collective_summary"]["total"]
    fit = " · ".join("✓" if plan["fits"][k]["fits"] else "✗" for k in CHIPS)
    e = plan["estimate"]["v5p"]
    warn = (
      f" ({len(plan.get('spmd_warnings', []))} SPMD remat warnings)"
      if plan.get("spmd_warnings")
      else ""
    )
    lines.append(
      f"| `{plan['config'].removeprefix('configs/')}` | {plan['devices']} | "
      f"{plan['mesh_text']}{warn} | "
      f"{plan['params'] / 1e6:,.0f} M | {fmt_bytes(m['params'])} | {fmt_bytes(m['opt_state'])} | "
      f"{fmt_bytes(m['temp'])} | "
      f"{fmt_bytes(m['peak'])} | {fmt_bytes(w['bytes']) if w else '—'} | "
      f"{fmt_bytes(t['bytes_per_step'])} | "
      f"{fmt_bytes(t['ici_traffic'])} / {fmt_bytes(t['dcn_traffic'])} | "
      f"{fmt_s(e['step_s_overlap'])} | {fit} | "
      f"{plan['compile_s']:.0f} s | {MAXTEXT_MFU['8b' if plan['params'] > 5e9 else 'none']} |"
    )
    details.append(markdown(plan))
  return "\n".join(lines + ["", "## Each plan", ""] + details) + "\n"
