"""Scale by simulation: compile a config's real train step for N devices and read what it would
need.

Commands:
  python -m launch.plan --config configs/lm/scale.py:8b --devices 256 [--chip v5p] [--out plan.json]
  python -m launch.plan --config configs/lm/scale.py:8b_2slice --devices 512 --slices 2
  python -m launch.plan --config configs/continuous_cot/paper.py --devices 64 --ici=1,-1,1 \\
      --config.train.batch_size=64
  python -m launch.plan --report benchmarks/scale_plan.md [--out all.json]   # every row of \\
      REPORT_PLANS

The devices are *fake CPU devices*: the compile runs in a fresh subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (this process never initialises a JAX
backend). It builds the mesh from ``config.mesh.ici`` / ``dcn`` (or ``--ici`` / ``--dcn`` /
``--slices``), the abstract train state with ``jax.eval_shape`` (no parameter memory), and lowers
and compiles the loop's own train step (``superpose.train.step``) with the trainer's train loss on
the batch its spec declares. No data is read: any trainer whose module has ``make_spec(cfg)``
(superpose.train.task) can be planned, with no registry here.

It prints (and ``--out`` writes as JSON): per-device parameter, optimizer-state, batch and temp
bytes from ``compiled.memory_analysis()``; the largest parameter/optimizer tensor held whole on a
device (flagged above 1 MiB: a sharding hole); the collectives of the compiled HLO with their bytes
per step; whether the step fits the HBM of TPU v4 / v5e / v5p / v6e, H100, H200; and a step-time
estimate per chip from model FLOPs / bf16 peak and collective traffic / interconnect bandwidth
(figures in launch.plan_report.CHIPS). Caveat printed with every plan: it is XLA:CPU's compile of
the SPMD program, so temp sizes and fusion differ from XLA:TPU/GPU (bf16 may be kept in f32), though
sharding, parameter and optimizer bytes and the set of collectives come from the same partitioner.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

from launch import plan_report as rep

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (config, devices, slices, ici override or None, overrides): the rows of benchmarks/scale_plan.md.
REPORT_PLANS: tuple[tuple[str, int, int | None, str | None, tuple[str, ...]], ...] = (
  ("configs/lm/scale.py:125m_host", 8, None, None, ()),
  ("configs/lm/scale.py:125m", 256, None, None, ()),
  ("configs/lm/scale.py:125m_2slice", 512, 2, None, ()),
  ("configs/lm/scale.py:350m", 256, None, None, ()),
  ("configs/lm/scale.py:1_3b", 256, None, None, ()),
  ("configs/lm/scale.py:8b_host", 8, None, None, ()),
  ("configs/lm/scale.py:8b", 256, None, None, ()),
  ("configs/lm/scale.py:8b", 256, None, None, ("--config.model.param_dtype=float32",)),
  ("configs/lm/scale.py:8b_2slice", 512, 2, None, ()),
  ("configs/superposed_experts/gpt2.py", 8, None, "1,-1,1", ()),
  ("configs/superposed_experts/gpt2.py", 64, None, "8,-1,1", ("--config.train.batch_size=64",)),
  ("configs/continuous_cot/paper.py", 8, None, "1,-1,1", ()),
  ("configs/continuous_cot/paper.py", 64, None, "8,-1,1", ()),
  ("configs/icl_superposition/retrieval.py:paper", 8, None, "1,-1,1", ()),
  (
    "configs/icl_superposition/retrieval.py:paper",
    64,
    None,
    "8,-1,1",
    ("--config.train.batch_size=64",),
  ),
)


class PlanError(ValueError):
  """Bad input to the planner (printed as one line, exit status 2)."""


# --- config ---------------------------------------------------------------------------------------


def load_config(spec: str, overrides: Sequence[str] = ()):
  """``path.py[:variant]`` → the config, with ``key.sub=value`` overrides applied (values as Python
  literals)."""
  from superpose.train.config import ConfigError

  path, _, variant = spec.partition(":")
  file = pathlib.Path(path) if pathlib.Path(path).is_absolute() else ROOT / path
  if not file.exists():
    raise ConfigError(f"--config: {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"_plan_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    config = module.get_config(variant) if variant else module.get_config()
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for item in overrides:
    key, eq, text = item.removeprefix("--").removeprefix("config.").partition("=")
    if not eq:
      raise ConfigError(f"override {item!r}: expected key=value")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node, parts = config, key.split(".")
    try:
      for k in parts[:-1]:
        node = node[k]
      if parts[-1] not in node:
        raise KeyError(parts[-1])
      node[parts[-1]] = tuple(value) if isinstance(value, list) else value
    except (KeyError, TypeError, AttributeError) as e:
      raise ConfigError(
        f"override config.{key}: {' '.join(str(e).split()) or 'unknown key'}"
      ) from None
  return config


def parse_sizes(text: str | None, what: str) -> tuple[int, ...] | None:
  if text is None:
    return None
  try:
    sizes = tuple(int(s) for s in text.strip("()[] ").split(",") if s.strip())
  except ValueError:
    raise PlanError(f"--{what}={text!r}: expected three integers like 1,-1,4") from None
  if len(sizes) != 3:
    raise PlanError(f"--{what}={text!r}: expected three sizes (data, fsdp, tensor)")
  return sizes


def resolve_mesh(
  config, devices: int, slices: int | None, ici_text: str | None, dcn_text: str | None
):
  """(ici, dcn, slices) with the -1s filled in, or a one-line error."""
  from superpose.train.mesh import fill_axes

  ici = parse_sizes(ici_text, "ici") or tuple(config.mesh.ici)
  dcn = parse_sizes(dcn_text, "dcn") or tuple(config.mesh.dcn)
  if slices is None:
    slices = math.prod(dcn) if -1 not in dcn else 1
  elif dcn_text is None and (-1 in dcn or math.prod(dcn) != slices):
    dcn = (slices, 1, 1)  # data parallelism across slices (MaxText's default for DCN)
  if slices < 1 or devices % slices:
    raise PlanError(f"--devices={devices} is not divisible by --slices={slices}")
  dcn = fill_axes(dcn, slices, "dcn mesh")
  ici = fill_axes(ici, devices // slices, "ici mesh")
  return ici, dcn, slices


# --- the compile (runs in the subprocess) ---------------------------------------------------------


def _leaf_bytes(a, per_device: bool) -> int:
  shape = a.sharding.shard_shape(a.shape) if per_device else a.shape
  return math.prod(shape) * a.dtype.itemsize


def plan_one(job: Mapping[str, Any]) -> dict[str, Any]:
  """Compile one config's train step on the current (fake) devices and measure it."""
  import jax
  from superpose.nn import sharding as shd
  from superpose.train import (
    config as config_lib,
    loop,
    optim,
    state as state_lib,
    step as step_lib,
  )
  from superpose.train import task as task_lib
  from superpose.train.loader import make_spec
  from superpose.train.mesh import make_mesh

  config = load_config(job["config"], job["overrides"])
  config_lib.check(config)
  ici, dcn, slices = resolve_mesh(config, job["devices"], job["slices"], job["ici"], job["dcn"])
  if jax.device_count() != job["devices"]:
    raise PlanError(f"the worker sees {jax.device_count()} devices, not {job['devices']}")
  notes = []
  if config.model.attention != "xla":
    notes.append(
      f"model.attention={config.model.attention!r} replaced by 'xla' (the CPU compile cannot lower "
      "it)"
    )
    config.model.attention = "xla"
  config.mesh.ici, config.mesh.dcn = ici, dcn
  cfg = config_lib.to_dict(config)
  spec = make_spec(
    cfg
  )  # the trainer's data-free spec (superpose.train.loader.make_spec): no file is read
  mesh = make_mesh(ici, dcn)
  rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in cfg["sharding"]["rules"])
  with jax.set_mesh(mesh), shd.axis_rules(rules):
    graphdef, abs_params, _ = state_lib.split_model(spec.make_model, mesh)
    tx, _ = optim.make_optimizer(spec.config["optim"], abs_params, cfg["train"]["steps"])
    abstract = state_lib.abstract_state(tx, abs_params, mesh)
    state_sh = jax.tree.map(lambda a: a.sharding, abstract)
    fields = spec.batch_spec()
    batch_sh = loop._batch_shardings(fields, mesh)
    batch = task_lib.abstract_batch(fields, batch_sh)
    shapes = {k: (f.shape, f.dtype) for k, f in fields.items()}
    step = step_lib.jit_train_step(
      step_lib.make_train_step(graphdef, spec.train_loss, tx, cfg["train"]["accum_steps"]),
      state_sh,
      batch_sh,
    )
    t0 = time.perf_counter()
    lowered = step.lower(abstract, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  hlo = compiled.as_text()

  def by_path(tree, per_device=True):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
      (jax.tree_util.keystr(p, simple=True, separator="/"), a, _leaf_bytes(a, per_device))
      for p, a in flat
    ]

  params = by_path(abstract["params"])
  opt = by_path(abstract["opt_state"])
  whole = [
    (path, a, b)
    for path, a, b in params + opt
    if a.size and tuple(a.sharding.shard_shape(a.shape)) == tuple(a.shape)
  ]
  whole.sort(key=lambda x: -x[2])
  batch_bytes = sum(_leaf_bytes(a, True) for a in batch.values()) + 4
  p_bytes, o_bytes = sum(b for _, _, b in params), sum(b for _, _, b in opt)
  device_order = [d.id for d in mesh.devices.flat]
  model = cfg["model"]
  f32_as_bf16 = model.get("dtype") == "bfloat16" and model.get("param_dtype") == "bfloat16"
  coll = rep.collectives(hlo, device_order, job["devices"] // slices, f32_as_bf16)
  summary = rep.summarise(coll)
  n = job["devices"]
  memory = {
    "params": p_bytes,
    "opt_state": o_bytes,
    "batch": batch_bytes,
    "argument": mem.argument_size_in_bytes,
    "temp": mem.temp_size_in_bytes,
    "output": mem.output_size_in_bytes,
    "alias": mem.alias_size_in_bytes,
    "generated_code": mem.generated_code_size_in_bytes,
  }
  memory["peak"] = memory["argument"] + memory["temp"] + max(0, memory["output"] - memory["alias"])
  if abs(memory["argument"] - (p_bytes + o_bytes + batch_bytes)) > 1024:
    notes.append(
      f"memory_analysis arguments {memory['argument']} B ≠ params + opt + batch "
      f"{p_bytes + o_bytes + batch_bytes} B"
    )
  plan = {
    "config": job["config"] + "".join(f" {o}" for o in job["overrides"]),
    "trainer": cfg["trainer"],
    "devices": n,
    "slices": slices,
    "device_kind": f"fake CPU devices ({jax.devices()[0].device_kind}, "
    f"XLA_FLAGS=--xla_force_host_platform_device_count={n})",
    "mesh": {"ici": list(ici), "dcn": list(dcn), "shape": dict(mesh.shape)},
    "mesh_text": " × ".join(f"{k} {v}" for k, v in mesh.shape.items())
    + (f", dcn {tuple(dcn)}" if slices > 1 else ""),
    "params": sum(a.size for _, a, _ in params),
    "param_bytes_total": sum(_leaf_bytes(a, False) for _, a, _ in params),
    "opt_bytes_total": sum(_leaf_bytes(a, False) for _, a, _ in opt),
    "batch_shapes": {k: [list(s), d] for k, (s, d) in shapes.items()},
    "batch_shapes_text": ", ".join(
      f"{k} {'×'.join(map(str, s))}" for k, (s, d) in list(shapes.items())[:1]
    ),
    "memory": memory,
    "lower_s": t1 - t0,
    "compile_s": t2 - t1,
    "largest_whole": (
      {
        "path": whole[0][0],
        "shape": list(whole[0][1].shape),
        "dtype": str(whole[0][1].dtype),
        "bytes": whole[0][2],
      }
      if whole
      else None
    ),
    "whole_over_1mib": [
      {"path": w[0], "shape": list(w[1].shape), "bytes": w[2]} for w in whole if w[2] > rep.MiB
    ],
    "collectives": coll,
    "collective_summary": summary,
    "flops_per_step": spec.flops_per_step,
    "flops_per_device": spec.flops_per_step / n,
    "tokens_per_step": spec.tokens_per_step,
    "xla_flops_per_device": float(cost.get("flops", float("nan"))) if cost else float("nan"),
    "fits": rep.fits(memory["peak"]),
    "f32_as_bf16": f32_as_bf16,
    "estimate": rep.estimate(spec.flops_per_step / n, coll, f32_as_bf16),
    "notes": notes,
  }
  plan["verdict"] = rep.verdict(plan, job.get("chip", "v5p"))
  return plan


_MARK = "launch.plan job "
_SPMD = "Involuntary full rematerialization"


def _spmd_warnings(stderr: str, count: int) -> list[list[str]]:
  """Per job, the SPMD partitioner's "involuntary full rematerialization" warnings (a tensor the
  partitioner had to replicate to reshard) that XLA logged to the worker's stderr."""
  out: list[list[str]] = [[] for _ in range(count)]
  current = -1
  for line in stderr.splitlines():
    if line.startswith(_MARK):
      current = int(line[len(_MARK) :])
    elif _SPMD in line and 0 <= current < count:
      text = line[line.index(_SPMD) :]
      out[current].append(text.split(" As the last resort")[0][:400])
  return out


def worker(jobs_file: str, result_file: str) -> None:
  """Subprocess entry: run each job, write {'versions', 'plans': [plan | {'error'}]}."""
  import flax
  import jax
  from superpose.train.config import ConfigError
  from superpose.train.mesh import MeshError

  jax.config.update("jax_enable_compilation_cache", False)  # measure the compile, never a cache hit
  jobs = json.loads(pathlib.Path(jobs_file).read_text())
  out = {
    "versions": {
      "jax": jax.__version__,
      "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
      "flax": flax.__version__,
      "python": sys.version.split()[0],
    },
    "plans": [],
  }
  for i, job in enumerate(jobs):
    print(f"{_MARK}{i}", file=sys.stderr, flush=True)
    try:
      out["plans"].append(plan_one(job))
    except (ConfigError, MeshError, PlanError, FileNotFoundError) as e:
      out["plans"].append(
        {"config": job["config"], "devices": job["devices"], "error": " ".join(str(e).split())}
      )
    except Exception as e:  # an XLA or tracing failure: report it and go on with the next job
      text = " ".join(str(e).split())[:500]
      out["plans"].append(
        {"config": job["config"], "devices": job["devices"], "error": f"{type(e).__name__}: {text}"}
      )
    pathlib.Path(result_file).write_text(json.dumps(out, default=float))
    print(f"plan: {job['config']} on {job['devices']} devices done", file=sys.stderr, flush=True)


# --- the parent: subprocesses per device count ----------------------------------------------------


def run_plans(jobs: Sequence[Mapping[str, Any]], timeout: float | None = None) -> dict[str, Any]:
  """Run ``jobs`` (dicts of config, overrides, devices, slices, ici, dcn, chip) in one subprocess
  per device count, each with that many fake CPU devices. Returns {'versions', 'plans'} in the order
  of ``jobs``."""
  by_count: dict[int, list[int]] = {}
  for i, job in enumerate(jobs):
    by_count.setdefault(job["devices"], []).append(i)
  plans: list[Any] = [None] * len(jobs)
  versions: dict[str, str] = {}
  for count, idx in by_count.items():
    with tempfile.TemporaryDirectory() as tmp:
      jobs_file, result_file = pathlib.Path(tmp) / "jobs.json", pathlib.Path(tmp) / "result.json"
      jobs_file.write_text(json.dumps([jobs[i] for i in idx]))
      flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if "xla_force_host_platform_device_count" not in f
      ]
      env = {
        **os.environ,
        "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={count}"]),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
      }
      proc = subprocess.run(
        [
          sys.executable,
          "-m",
          "launch.plan",
          "--worker",
          str(jobs_file),
          "--result",
          str(result_file),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
      )
      result = json.loads(result_file.read_text()) if result_file.exists() else {"plans": []}
      versions = result.get("versions", versions)
      warnings = _spmd_warnings(proc.stderr, len(idx))
      for k, i in enumerate(idx):
        if k < len(result["plans"]):
          plans[i] = result["plans"][k]
          if "error" not in plans[i]:
            plans[i]["spmd_warnings"] = warnings[k]
            if warnings[k]:
              plans[i]["notes"].append(
                f"{len(warnings[k])} SPMD involuntary full rematerialization warning(s): "
                f"{warnings[k][0]}"
              )
        else:
          tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
          plans[i] = {
            "config": jobs[i]["config"],
            "devices": count,
            "error": f"worker exited with status {proc.returncode}: {tail}",
          }
  return {"versions": versions, "plans": plans}


def job(
  config: str,
  devices: int,
  slices: int | None = None,
  ici: str | None = None,
  dcn: str | None = None,
  overrides: Sequence[str] = (),
  chip: str = "v5p",
) -> dict[str, Any]:
  return {
    "config": config,
    "devices": devices,
    "slices": slices,
    "ici": ici,
    "dcn": dcn,
    "overrides": list(overrides),
    "chip": chip,
  }


def report(md_path: str, plans_spec=REPORT_PLANS, json_path: str | None = None) -> dict[str, Any]:
  """Run every row of ``plans_spec`` and write the Markdown report (and, with ``json_path``, every
  plan as JSON)."""
  jobs = [job(c, d, s, ici, None, o) for c, d, s, ici, o in plans_spec]
  t0 = time.perf_counter()
  result = run_plans(jobs)
  text = rep.report_markdown(
    result,
    [j["config"] for j in jobs],
    md_path,
    time.perf_counter() - t0,
    datetime.date.today().isoformat(),
  )
  pathlib.Path(md_path).write_text(text)
  if json_path:
    pathlib.Path(json_path).write_text(json.dumps(result, indent=1, default=float))
  return result


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m launch.plan", description=__doc__.split("\n")[0])
  parser.add_argument("--config", help="config file, path.py[:variant]")
  parser.add_argument("--devices", type=int, help="total devices (all slices)")
  parser.add_argument(
    "--slices", type=int, default=None, help="number of slices (DCN); default from config.mesh.dcn"
  )
  parser.add_argument(
    "--ici",
    help="mesh sizes within a slice, data,fsdp,tensor (one -1), e.g. --ici=1,-1,4 "
    "(write --ici=-1,1,1 with '=' when the first size is -1)",
  )
  parser.add_argument("--dcn", help="mesh sizes across slices, e.g. --dcn=2,1,1")
  parser.add_argument(
    "--chip", default="v5p", choices=sorted(rep.CHIPS), help="chip of the fit verdict"
  )
  parser.add_argument("--out", help="write the plan as JSON here")
  parser.add_argument(
    "--report", help="run REPORT_PLANS and write this Markdown file (--out: all plans as JSON)"
  )
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--result", help=argparse.SUPPRESS)
  args, rest = parser.parse_known_args(argv)
  if args.worker:
    worker(args.worker, args.result)
    return 0
  from superpose.train.config import ConfigError
  from superpose.train.mesh import MeshError

  try:
    bad = [r for r in rest if not r.startswith("--config.")]
    if bad:
      raise PlanError(
        f"unexpected arguments: {' '.join(bad)} (overrides look like --config.train.seq_len=1024)"
      )
    if args.report:
      result = report(args.report, json_path=args.out)
      failed = [p for p in result["plans"] if "error" in p]
      print(
        f"wrote {args.report} ({len(result['plans']) - len(failed)} plans, {len(failed)} failed)"
      )
      for p in failed:
        print(f"failed: {p['config']} on {p['devices']}: {p['error']}", file=sys.stderr)
      return 1 if failed else 0
    if not args.config or not args.devices:
      raise PlanError("--config and --devices are required (or --report FILE)")
    if args.devices < 1:
      raise PlanError(f"--devices={args.devices}: must be ≥ 1")
    config = load_config(args.config, rest)  # fail fast, before the subprocess
    resolve_mesh(config, args.devices, args.slices, args.ici, args.dcn)
    result = run_plans(
      [job(args.config, args.devices, args.slices, args.ici, args.dcn, rest, args.chip)]
    )
    plan = result["plans"][0]
    if "error" in plan:
      raise PlanError(plan["error"])
  except (ConfigError, MeshError, PlanError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  print(rep.markdown(plan, args.chip))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps({**result, "plan": plan}, indent=1, default=float))
  return 0


if __name__ == "__main__":
  sys.exit(main())
