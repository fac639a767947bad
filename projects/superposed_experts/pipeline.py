"""The whole experiment in one command (issue §3): data, then per seed (a) base, (b) experts, (c)
superpositions, then (d) evaluation of every method.

    python -m projects.superposed_experts.pipeline --config configs/superposed_experts/tiny.py \\
        --workdir workdirs/sx_k2 [--seeds 3] [--experts 2|3] [--router]
    python -m projects.superposed_experts.pipeline --config configs/superposed_experts/gpt2.py \\
        --workdir workdirs/sx_gpt2 --expert-dirs /path/to/gpt2 /path/to/gpt2-french   # skips (a), (b)

Stages run as ``python -m launch.train`` subprocesses (a clean JAX state each) with the config's
variants ``base``, ``expert`` (trained from the base with ``init_from``), ``superpose`` (or the
config's default variant where it has none), ``blend_only`` and ``router``; the overrides name the
seed, the domain files and the runs each stage builds on. Layout::

    DIR/config.py                         the config file, copied: every stage reads this copy
    DIR/pipeline.json                     what evaluate.py reads (domains, files, runs per seed)
    DIR/seed_<s>/<stage>/                 one workdir per stage: base, expert_<domain>, superpose, ...
    DIR/seed_<s>/<stage>.log              the stage's output
    DIR/eval_sequences/, DIR/eval/        the test sequences and cached scores (evaluate.py)
    DIR/results.{md,json}, DIR/*.png      the results

A stage whose workdir holds ``DONE`` is skipped; an interrupted one resumes from its last
checkpoint (launch.train's own resume). Delete a stage's folder to retrain it.
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

DATA_ROOT = "workdirs/superposed_data"
DOMAIN_ORDER = ("english", "french", "python")


def load_config_module(path: str):
  spec = importlib.util.spec_from_file_location("pipeline_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def snapshot_config(path: str, workdir: pathlib.Path) -> str:
  """Copies the config file to ``workdir/config.py`` (every stage of every seed reads the copy, so an
  edit of the original mid-run cannot mix settings); a resumed run must bring the same file."""
  text = pathlib.Path(path).read_text("utf-8")
  copy = workdir / "config.py"
  if copy.exists() and copy.read_text("utf-8") != text:
    raise ValueError(f"{path} differs from {copy}, which the stages already trained in {workdir} used: "
                     "use a new --workdir, or delete the copy (and the stages) to retrain")
  copy.write_text(text, "utf-8")
  return str(copy)


def superpose_variant(module) -> str:
  """``superpose`` where the config has it (tiny.py), else its default variant (gpt2.py)."""
  try:
    module.get_config("superpose")
    return "superpose"
  except ValueError:
    return ""


def stage_commands(config: str, variant: str, workdir: pathlib.Path, seed: int, names, data_root: pathlib.Path,
                   router: bool, overrides: dict[str, list[str]], expert_dirs=None) -> list[tuple[str, list[str]]]:
  """(stage name, argv) of every training stage of one seed, in order."""
  from projects.superposed_experts import data as data_lib
  w = workdir / f"seed_{seed}"
  files = lambda split: tuple(str(data_lib.domain_file(data_root, n, split)) for n in names)
  common = [f"--config.seed={seed}", f"--config.superposed.domains={tuple(names)}",
            f"--config.superposed.train_paths={files('train')}", f"--config.superposed.val_paths={files('val')}",
            f"--config.superposed.num_experts={len(names)}"]

  def cmd(variant, stage, *extra):
    return (stage, [sys.executable, "-m", "launch.train", f"--config={config}:{variant}", f"--workdir={w / stage}",
                    *common, *extra, *overrides.get(stage, []), *overrides.get("*", [])])

  def lm_data(name):
    return (f"--config.data.path={data_lib.domain_file(data_root, name, 'train')}",
            f"--config.data.val_path={data_lib.domain_file(data_root, name, 'val')}")

  stages = []
  if not expert_dirs:
    stages.append(cmd("base", "base", *lm_data(names[0])))
    stages += [cmd("expert", f"expert_{n}", *lm_data(n), f"--config.train.init_from={w / 'base'}") for n in names[1:]]
  experts = f"--config.superposed.experts={tuple(map(str, expert_dirs or expert_workdirs(w, names)))}"
  stages += [cmd(variant, "superpose", experts), cmd("blend_only", "blend_only", experts)]
  if router:
    stages.append(cmd("router", "router", experts))
  return stages


def expert_workdirs(w: pathlib.Path, names) -> list[pathlib.Path]:
  return [w / "base"] + [w / f"expert_{n}" for n in names[1:]]


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
  """The base's and the experts' perplexity on each domain's validation sequences: fine-tuning on
  another domain must visibly raise the base domain's perplexity."""
  from projects.superposed_experts import baselines as bl, data as data_lib, evaluate
  val, _ = data_lib.heldout(spec, data_lib.VAL_SEQUENCES, log=log)
  for label, path in zip(["base"] + [f"expert_{n}" for n in names[1:]], experts):
    graphdef, params, _ = evaluate.load_run(path)
    fn = evaluate.lm_scorer(graphdef)
    ppl = {d: bl.perplexity(evaluate.score(fn, params, val[d])[0], evaluate.weights(val[d])) for d in names}
    log(f"  val perplexity of {label:<16}" + "  ".join(f"{d} {p:7.3f}" for d, p in ppl.items()))


def parse_overrides(items: list[str]) -> dict[str, list[str]]:
  """``[STAGE:]KEY=VALUE`` → {stage or '*': ['--config.KEY=VALUE', ...]}."""
  out: dict[str, list[str]] = {}
  for item in items:
    stage, _, rest = item.rpartition(":") if ":" in item.split("=", 1)[0] else ("*", "", item)
    out.setdefault(stage, []).append(f"--config.{rest}")
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m projects.superposed_experts.pipeline",
                               description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True, help="config file with the variants base, expert, superpose, blend_only")
  ap.add_argument("--workdir", required=True, type=pathlib.Path)
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--experts", type=int, default=2, choices=(2, 3), help="2: English + French; 3: + Python")
  ap.add_argument("--router", action="store_true", help="also train the per-token router variant")
  ap.add_argument("--expert-dirs", nargs="+", type=pathlib.Path,
                  help="existing experts (our workdirs or HF GPT-2 directories), base first: skips (a) and (b)")
  ap.add_argument("--data", type=pathlib.Path, default=pathlib.Path(DATA_ROOT), help="corpora and domain files")
  ap.add_argument("--eval-sequences", type=int, default=1000, help="test sequences per domain")
  ap.add_argument("--override", action="append", default=[], metavar="[STAGE:]KEY=VALUE",
                  help="extra --config.KEY=VALUE for one stage (base, expert_french, superpose, ...) or all")
  args = ap.parse_args(argv)
  from projects.superposed_experts import data as data_lib, evaluate

  start = time.time()
  names = DOMAIN_ORDER[:args.experts]
  if args.expert_dirs and len(args.expert_dirs) != len(names):
    ap.error(f"--expert-dirs names {len(args.expert_dirs)} experts for {len(names)} domains")
  args.workdir.mkdir(parents=True, exist_ok=True)
  try:
    config = snapshot_config(args.config, args.workdir)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  module = load_config_module(config)
  variant = superpose_variant(module)
  reference = module.get_config(variant)
  print(f"data: building corpora and domain files under {args.data} (cached after the first time)")
  data_lib.prepare(args.data, {n: data_lib.DOMAINS[n] for n in names})
  files = {s: [str(data_lib.domain_file(args.data, n, s)) for n in names] for s in ("train", "val", "test")}
  tokenizer, seq_len = reference.data.tokenizer, reference.train.seq_len
  spec = data_lib.Spec(tuple(names), tuple(files["train"]), tuple(files["val"]), tokenizer, seq_len)
  overrides = parse_overrides(args.override)
  layout = {"domains": list(names), "train_paths": files["train"], "val_paths": files["val"],
            "test_paths": files["test"], "tokenizer": tokenizer, "seq_len": seq_len,
            "eval_sequences": args.eval_sequences, "config": config, "seeds": {}}
  times = {}
  for seed in range(args.seeds):
    w = args.workdir / f"seed_{seed}"
    w.mkdir(parents=True, exist_ok=True)
    experts = [str(p) for p in (args.expert_dirs or expert_workdirs(w, names))]
    print(f"seed {seed}:")
    for stage, cmd in stage_commands(config, variant, args.workdir, seed, names, args.data, args.router,
                                     overrides, args.expert_dirs):
      if stage == "superpose" and (seed == 0 or not args.expert_dirs):
        print_forgetting(experts, names, spec)
      times[f"{seed}/{stage}"] = run_stage(stage, cmd, w)
    runs = {"experts": experts, "superposed": {"superposed": str(w / "superpose"), "blend_only": str(w / "blend_only")}}
    if args.router:
      runs["superposed"]["superposed_router"] = str(w / "router")
    layout["seeds"][str(seed)] = runs
  (args.workdir / "pipeline.json").write_text(json.dumps(layout, indent=1) + "\n", "utf-8")
  train_s = sum(times.values())
  eval_start = time.time()
  evaluate.run(args.workdir)
  eval_s = time.time() - eval_start
  total = time.time() - start
  print(f"wall time {total / 60:.1f} min: training {train_s / 60:.1f} min ({sum(t > 0 for t in times.values())} of "
        f"{len(times)} stages run now), evaluation {eval_s / 60:.1f} min")
  return 0


if __name__ == "__main__":
  sys.exit(main())
