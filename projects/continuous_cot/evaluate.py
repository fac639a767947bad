"""Accuracy of trained runs on a released ProsQA split, with 95% intervals, side by side.

    python -m projects.continuous_cot.evaluate --workdir W/coconut W/cot W/nocot \\
        [--data ../shared/data/prosqa] [--split graph4_shuffled] [--out results.md]

Each run is read at the step its ``selection.json`` names (chosen on *generated* validation data by
train.py; the newest checkpoint where there is none) and scored on the released split with the same
rows and metrics as its in-training evaluation: Coconut with the gold hop count of thoughts and with
the fixed count (``config.cot.eval_fixed_thoughts``), CoT by greedy decoding, No-CoT at ``[A]``.
Every row of the table gives the metrics of :mod:`projects.continuous_cot.metrics`: full-vocabulary
accuracy (the paper's), two-candidate accuracy, the fraction of answers that are a candidate, and
the floors "always the first candidate" and "the candidate with more ancestors" (per question, in
the prompt's candidate order). Intervals are 95 % Wilson score intervals. Nothing here feeds back
into selection.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
from flax import nnx

from projects.continuous_cot import data as data_lib
from projects.continuous_cot import metrics as metrics_lib
from projects.continuous_cot import train as train_lib
from superpose.train import checkpoint as ckpt_lib
from superpose.train.loader import load_model
from superpose.train import config as config_lib

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prosqa"


wilson = metrics_lib.wilson


def selected_checkpoint(workdir: pathlib.Path) -> tuple[pathlib.Path, str]:
  """(checkpoint to read, how it was chosen)."""
  selection = workdir / "selection.json"
  if selection.exists():
    sel = json.loads(selection.read_text())
    if sel.get("checkpoint") and pathlib.Path(sel["checkpoint"]).exists():
      return pathlib.Path(
        sel["checkpoint"]
      ), f"step {sel['step']} (best {sel['metric']} {sel['value']:.3f} on generated validation)"
  return ckpt_lib.checkpoint_dir(workdir), "newest checkpoint (no selection.json)"


def load_trained(workdir: str | pathlib.Path) -> tuple[dict, nnx.Module, pathlib.Path, str]:
  """(config, model with the selected checkpoint's parameters, checkpoint path, how it was chosen)
  of a run."""
  path, how = selected_checkpoint(pathlib.Path(workdir))
  run = load_model(workdir, checkpoint=path)
  return run.config, run.model, path, how


def evaluate_run(workdir: str | pathlib.Path, problems: list) -> dict:
  """Counts of one run on ``problems``: {metric: (k, n)} for every 0/1 metric of its evaluation
  (``acc``, ``acc_two``, ``is_cand``, Coconut's ``*_fixed`` and ``hop{k}``, the floors), and
  ``means`` of the others (Coconut's ``hop{k}_mass``)."""
  config, model, path, how = load_trained(workdir)
  task = train_lib.make_task(config, valid=problems)
  graphdef, params = nnx.split(model)
  eval_set = task.data.eval_set

  @jax.jit
  def metrics(params, batch):
    model = nnx.merge(graphdef, params)
    return task.spec.eval_loss(model, batch)[1]

  totals: dict[str, float] = {}
  for i in range(eval_set.num_batches):
    batch = eval_set.batch(i)
    for k, v in metrics(
      params, batch
    ).items():  # each is Σ correct · num_batches / n over the batch
      totals[k] = totals.get(k, 0.0) + float(v)
  n = len(problems)
  means = {k: v / eval_set.num_batches for k, v in totals.items()}
  counts = {k: (int(round(v * n)), n) for k, v in means.items() if not k.endswith("_mass")}
  return {
    "method": task.spec.method,
    "checkpoint": str(path),
    "chosen": how,
    "counts": counts,
    "means": {k: v for k, v in means.items() if k.endswith("_mass")},
  }


def markdown(split: str, results: dict[str, dict]) -> str:
  rows, chosen = {}, []
  for name, r in results.items():
    labels = {
      "": "gold hop count" if r["method"] == "coconut" else "answer",
      "_fixed": "fixed thought count",
    }
    for variant, counts in metrics_lib.by_variant(r["counts"]).items():
      rows[f"{name}: {r['method']}, {labels[variant]}"] = counts
    chosen.append(f"- {name}: {r['chosen']} (`{r['checkpoint']}`)")
  return (
    f"# Answers on `{split}` (95% Wilson intervals)\n\n"
    + metrics_lib.table(rows)
    + "\n\nFloors are per question in the prompt's candidate order; ties in ancestors go to the "
    "first "
    "candidate.\n\nCheckpoints:\n" + "\n".join(chosen) + "\n"
  )


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m projects.continuous_cot.evaluate", description=__doc__.split("\n")[0]
  )
  ap.add_argument("--workdir", nargs="+", required=True, type=pathlib.Path)
  ap.add_argument(
    "--data", type=pathlib.Path, default=DEFAULT_DATA, help="folder of the released ProsQA files"
  )
  ap.add_argument("--split", default="graph4_shuffled", choices=sorted(data_lib.RELEASED))
  ap.add_argument(
    "--file",
    type=pathlib.Path,
    help="any ProsQA JSON file instead of a released split (e.g. a "
    "generated test.json that no run selected on)",
  )
  ap.add_argument("--out", type=pathlib.Path, help="also write the Markdown table here")
  args = ap.parse_args(argv)
  path = args.file or args.data / data_lib.RELEASED[args.split]
  if not path.exists():
    print(
      f"error: {path} not found (--data names the folder of the released ProsQA files)",
      file=sys.stderr,
    )
    return 2
  problems = data_lib.load(path)
  results = {}
  for workdir in args.workdir:
    try:
      results[workdir.name] = evaluate_run(workdir, problems)
    except (FileNotFoundError, config_lib.ConfigError) as e:
      print(f"error: {workdir}: {e}", file=sys.stderr)
      return 2
  text = markdown(str(args.file) if args.file else f"the released split {args.split}", results)
  print(text)
  if args.out:
    args.out.write_text(text, "utf-8")
  return 0


if __name__ == "__main__":
  sys.exit(main())
