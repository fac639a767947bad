"""The whole experiment in one command: data, the experts (once), then per seed every learned way of
combining them, then the evaluation of every method and a side-by-side speed benchmark.

    python -m projects.superposed_experts.pipeline --config configs/superposed_experts/tiny.py \
        --workdir workdirs/sx_k2 [--seeds 3] [--experts 2|3] [--router] [--trunks trunk_r4 \\
        trunk_r8 ...]
    python -m projects.superposed_experts.pipeline --config configs/superposed_experts/tiny.py \
        --workdir workdirs/sx_k3 --experts 3 --expert-dirs A B C      # reuse experts trained before

Stages run as ``python -m launch.train`` subprocesses (a clean JAX state each). The experts — the
base (variant ``base``) and one fine-tune per other domain (``expert``, ``init_from`` the base) —
are trained ONCE, with seed 0, and shared by every seed: the question is how well each method
combines given experts, so the seeds vary what each method learns (its initialisation and data
order), not the experts. (Retraining them per seed would add expert-to-expert variance to every row
alike; the paired intervals of evaluate.py would then also cover it. A K = 3 run may reuse the K = 2
run's base and French expert with ``--expert-dirs``.) Per seed: ``superposed`` (the paper's model,
sequential training), ``superposed_tf`` (the same, teacher-forced as the notebook: the "before" of
the α plot), ``blend_only``, ``merge`` (learned per-layer merge), one-trunk runs (``--trunks``,
default ``trunk_r8``: rank-8 deltas) and with --router ``superposed_router``. Layout::

    DIR/config.py                         the config file, copied: every stage reads this copy
    DIR/pipeline.json                     what evaluate.py reads (domains, files, runs per seed)
    DIR/experts/<stage>/, .log            base, expert_<domain>
    DIR/seed_<s>/<stage>/, .log           one workdir per learned stage
    DIR/eval_sequences/, DIR/eval/        the test sequences and cached scores (evaluate.py)
    DIR/bench.json                        time per token of every method ÷ one expert's (bench.py)
    DIR/results.{md,json}, DIR/*.png      the results

A stage whose workdir holds ``DONE`` is skipped; an interrupted one resumes from its last checkpoint
(launch.train's own resume). Delete a stage's folder to retrain it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import shlex
import subprocess
import sys
import time
from typing import Sequence

DATA_ROOT = "workdirs/superposed_data"
DOMAIN_ORDER = ("english", "french", "python")


def load_config_module(path: str):
  spec = importlib.util.spec_from_file_location("pipeline_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def snapshot_config(path: str, workdir: pathlib.Path) -> str:
  """Copies the config file to ``workdir/config.py`` (every stage of every seed reads the copy, so
  an edit of the original mid-run cannot mix settings); a resumed run must bring the same file."""
  text = pathlib.Path(path).read_text("utf-8")
  copy = workdir / "config.py"
  if copy.exists() and copy.read_text("utf-8") != text:
    raise ValueError(
      f"{path} differs from {copy}, which the stages already trained in {workdir} used: "
      "use a new --workdir, or delete the copy (and the stages) to retrain"
    )
  copy.write_text(text, "utf-8")
  return str(copy)


LEARNED = {
  "superposed": "superpose",
  "superposed_tf": "teacher_forced",
  "blend_only": "blend_only",
  "merge": "merge",
  "superposed_router": "router",
}


def expert_commands(
  config: str,
  workdir: pathlib.Path,
  names,
  data_root: pathlib.Path,
  overrides: dict[str, list[str]],
) -> list[tuple[str, list[str]]]:
  """(stage, argv) of the experts: the base on domain 0, then each other domain's fine-tune of
  it."""
  from projects.superposed_experts import data as data_lib

  w = workdir / "experts"

  def cmd(variant, stage, name, *extra):
    return (
      stage,
      [
        sys.executable,
        "-m",
        "launch.train",
        f"--config={config}:{variant}",
        f"--workdir={w / stage}",
        "--config.seed=0",
        f"--config.data.path={data_lib.domain_file(data_root, name, 'train')}",
        f"--config.data.val_path={data_lib.domain_file(data_root, name, 'val')}",
        *extra,
        *overrides.get(stage, []),
        *overrides.get("*", []),
      ],
    )

  return [cmd("base", "base", names[0])] + [
    cmd("expert", f"expert_{n}", n, f"--config.train.init_from={w / 'base'}") for n in names[1:]
  ]


TRUNK_ABLATIONS = {
  "novec": "--config.superposed.delta_vectors=none",
  "fullemb": "--config.superposed.delta_embeddings=full",
  "nokd": "--config.superposed.distill_weight=0.0",
}


def trunk_overrides(stage: str) -> list[str]:
  """``trunk_r<rank>[_novec][_fullemb][_nokd]`` → the overrides of the ``trunk`` variant: the delta
  rank, no bias/norm deltas, full embedding deltas, no distillation."""
  rank, *flags = stage.removeprefix("trunk_r").split("_")
  unknown = [f for f in flags if f not in TRUNK_ABLATIONS]
  if not rank.isdigit() or unknown:
    raise ValueError(
      f"stage {stage!r}: expected trunk_r<rank> followed by any of "
      f"{', '.join('_' + f for f in TRUNK_ABLATIONS)}"
    )
  return [f"--config.superposed.rank={int(rank)}"] + [TRUNK_ABLATIONS[f] for f in flags]


def learned_commands(
  config: str,
  workdir: pathlib.Path,
  seed: int,
  names,
  data_root: pathlib.Path,
  experts,
  stages: Sequence[str],
  overrides: dict[str, list[str]],
) -> list[tuple[str, list[str]]]:
  """(stage, argv) of one seed's learned methods (``LEARNED`` names, ``trunk_r<rank>``)."""
  from projects.superposed_experts import data as data_lib

  w = workdir / f"seed_{seed}"
  files = lambda split: tuple(str(data_lib.domain_file(data_root, n, split)) for n in names)
  common = [
    f"--config.seed={seed}",
    f"--config.superposed.domains={tuple(names)}",
    f"--config.superposed.train_paths={files('train')}",
    f"--config.superposed.val_paths={files('val')}",
    f"--config.superposed.num_experts={len(names)}",
    f"--config.superposed.experts={tuple(map(str, experts))}",
  ]
  out = []
  for stage in stages:
    if stage.startswith("trunk_r"):
      variant, extra = "trunk", trunk_overrides(stage)
    else:
      variant, extra = LEARNED[stage], []
    out.append(
      (
        stage,
        [
          sys.executable,
          "-m",
          "launch.train",
          f"--config={config}:{variant}",
          f"--workdir={w / stage}",
          *common,
          *extra,
          *overrides.get(stage, []),
          *overrides.get("*", []),
        ],
      )
    )
  return out


def run_stage(stage: str, argv: list[str], workdir: pathlib.Path, log=print) -> float:
  """Runs one stage (skipped when DONE); returns its wall time (0 when skipped)."""
  done = workdir / stage / "DONE"
  if done.exists():
    log(f"  {stage}: done before, skipped")
    return 0.0
  start = time.time()
  logfile = workdir / f"{stage}.log"
  with open(logfile, "w") as out:
    out.write(shlex.join(argv) + "\n")
    out.flush()
    code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode
  lines = logfile.read_text("utf-8", "replace").splitlines()
  if code:
    tail = "\n".join(lines[-15:])
    raise RuntimeError(f"stage {stage} failed (exit {code}); the end of {logfile}:\n{tail}")
  done.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
  final = next((l for l in reversed(lines) if l.startswith("final step")), "")
  seconds = time.time() - start
  log(f"  {stage}: {seconds:.0f} s  {final}")
  return seconds


def print_forgetting(experts, names, spec, log=print) -> None:
  """The experts' NLL on each domain's validation sequences (nats/token; bits for bytes):
  fine-tuning on another domain must visibly raise the base domain's NLL."""
  import math
  from projects.superposed_experts import baselines as bl, data as data_lib, evaluate
  from superpose.train.loader import load_model

  val, _ = data_lib.heldout(spec, data_lib.VAL_SEQUENCES, log=log)
  for label, path in zip(["base"] + [f"expert_{n}" for n in names[1:]], experts):
    loaded = load_model(path)
    fn = evaluate.lm_scorer(loaded.graphdef)
    nll = {
      d: bl.nll(evaluate.score(fn, loaded.params, val[d])[0], evaluate.weights(val[d]))
      for d in names
    }
    log(
      f"  val NLL of {label:<16}"
      + "  ".join(f"{d} {x:.3f} ({x / math.log(2):.3f} bits)" for d, x in nll.items())
    )


def parse_overrides(items: list[str]) -> dict[str, list[str]]:
  """``[STAGE:]KEY=VALUE`` → {stage or '*': ['--config.KEY=VALUE', ...]}."""
  out: dict[str, list[str]] = {}
  for item in items:
    stage, _, rest = item.rpartition(":") if ":" in item.split("=", 1)[0] else ("*", "", item)
    out.setdefault(stage, []).append(f"--config.{rest}")
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m projects.superposed_experts.pipeline", description=__doc__.split("\n")[0]
  )
  ap.add_argument(
    "--config",
    required=True,
    help="config file with the variants base, expert, superpose, "
    "teacher_forced, blend_only, merge, trunk (and router)",
  )
  ap.add_argument("--workdir", required=True, type=pathlib.Path)
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument(
    "--experts", type=int, default=2, choices=(2, 3), help="2: English + French; 3: + Python"
  )
  ap.add_argument(
    "--router", action="store_true", help="also train the paper's model with a per-token router"
  )
  ap.add_argument(
    "--trunks",
    nargs="*",
    default=["trunk_r8"],
    help="one-trunk runs: trunk_r<rank>[_novec][_fullemb][_nokd] (no bias/norm deltas, full "
    "embedding "
    "deltas, no distillation)",
  )
  ap.add_argument(
    "--expert-dirs",
    nargs="+",
    type=pathlib.Path,
    help="existing experts (our workdirs or HF GPT-2 directories), base first: skips training them",
  )
  ap.add_argument(
    "--data", type=pathlib.Path, default=pathlib.Path(DATA_ROOT), help="corpora and domain files"
  )
  ap.add_argument("--eval-sequences", type=int, default=1000, help="test sequences per domain")
  ap.add_argument(
    "--no-bench", action="store_true", help="skip the speed benchmark (costs shown as FLOPs)"
  )
  ap.add_argument(
    "--override",
    action="append",
    default=[],
    metavar="[STAGE:]KEY=VALUE",
    help="extra --config.KEY=VALUE for one stage (base, expert_french, superposed, trunk_r8, ...) "
    "or all",
  )
  args = ap.parse_args(argv)
  from projects.superposed_experts import bench, data as data_lib, evaluate

  start = time.time()
  names = DOMAIN_ORDER[: args.experts]
  if args.expert_dirs and len(args.expert_dirs) != len(names):
    ap.error(f"--expert-dirs names {len(args.expert_dirs)} experts for {len(names)} domains")
  args.workdir.mkdir(parents=True, exist_ok=True)
  try:
    config = snapshot_config(args.config, args.workdir)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  reference = load_config_module(config).get_config("superpose")
  print(f"data: building corpora and domain files under {args.data} (cached after the first time)")
  data_lib.prepare(args.data, {n: data_lib.DOMAINS[n] for n in names})
  files = {
    s: [str(data_lib.domain_file(args.data, n, s)) for n in names] for s in ("train", "val", "test")
  }
  tokenizer, seq_len = reference.data.tokenizer, reference.train.seq_len
  spec = data_lib.Spec(tuple(names), tuple(files["train"]), tuple(files["val"]), tokenizer, seq_len)
  overrides = parse_overrides(args.override)
  layout = {
    "domains": list(names),
    "train_paths": files["train"],
    "val_paths": files["val"],
    "test_paths": files["test"],
    "tokenizer": tokenizer,
    "seq_len": seq_len,
    "eval_sequences": args.eval_sequences,
    "config": config,
    "seeds": {},
  }
  times = {}
  if args.expert_dirs:
    experts = [str(p) for p in args.expert_dirs]
  else:
    print("experts (once, shared by every seed):")
    (args.workdir / "experts").mkdir(exist_ok=True)
    for stage, cmd in expert_commands(config, args.workdir, names, args.data, overrides):
      times[f"experts/{stage}"] = run_stage(stage, cmd, args.workdir / "experts")
    experts = [str(args.workdir / "experts" / "base")] + [
      str(args.workdir / "experts" / f"expert_{n}") for n in names[1:]
    ]
  print_forgetting(experts, names, spec)
  for stage in args.trunks:
    try:
      trunk_overrides(stage)
    except ValueError as e:
      ap.error(str(e))
  stages = ["superposed", "superposed_tf", "blend_only", "merge", *args.trunks]
  if args.router:
    stages.append("superposed_router")
  for seed in range(args.seeds):
    w = args.workdir / f"seed_{seed}"
    w.mkdir(parents=True, exist_ok=True)
    print(f"seed {seed}:")
    for stage, cmd in learned_commands(
      config, args.workdir, seed, names, args.data, experts, stages, overrides
    ):
      times[f"{seed}/{stage}"] = run_stage(stage, cmd, w)
    layout["seeds"][str(seed)] = {"experts": experts, "learned": {st: str(w / st) for st in stages}}
  (args.workdir / "pipeline.json").write_text(json.dumps(layout, indent=1) + "\n", "utf-8")
  train_s = sum(times.values())
  bench_s = 0.0
  if not args.no_bench:
    t0 = time.time()
    bench.bench_pipeline(args.workdir)
    bench_s = time.time() - t0
  eval_start = time.time()
  evaluate.run(args.workdir)
  eval_s = time.time() - eval_start
  total = time.time() - start
  print(
    f"wall time {total / 60:.1f} min: training {train_s / 60:.1f} min "
    f"({sum(t > 0 for t in times.values())} of "
    f"{len(times)} stages run now), benchmark {bench_s / 60:.1f} min, evaluation {eval_s / 60:.1f} "
    "min"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
