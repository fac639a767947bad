"""The learning-curve report reads a run's metrics.jsonl and config.json: a plot and a table whose
cells are the evaluations' numbers with Wilson intervals, rows and real tokens seen up to each
evaluation."""

import json

from projects.continuous_cot import curves


def _fake_run(path, method="coconut"):
  path.mkdir()
  config = {
    "cot": {
      "method": method,
      "data_dir": str(path / "none"),
      "valid_file": "valid.json",
      "eval_limit": 200,
      "steps_per_stage": 10,
      "stage0_steps": 20,
    },
    "train": {"batch_size": 4, "steps": 60},
  }
  (path / "config.json").write_text(json.dumps(config))
  rows = [
    {
      "step": s,
      "loss": 3.0 - s / 60,
      "label_nll": 3.0 - s / 60,
      "grad_norm": 1.0,
      "data/row_tokens": 50.0,
    }
    for s in range(1, 61)
  ]
  rows += [
    {
      "step": s,
      "eval/acc": 0.25 * s / 30,
      "eval/acc_two": 0.5,
      "eval/is_cand": 1.0,
      "eval/hop1": 0.5,
      "eval/floor_first": 0.5,
      "eval/floor_ancestors": 0.65,
    }
    for s in (30, 60)
  ]
  (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  (path / "progress.json").write_text(json.dumps({"step": 60, "wall_time_s": 120.0}))
  return path


def test_curves_table_and_plot(tmp_path, capsys):
  a, b = _fake_run(tmp_path / "coconut"), _fake_run(tmp_path / "cot", "cot")
  assert curves.stage_starts(curves.read_run(a)["config"]) == [21, 31, 41, 51]
  assert curves.stage_starts(curves.read_run(b)["config"]) == []
  assert (
    curves.main(["--workdir", str(a), str(b), "--out", str(tmp_path / "out"), "--name", "x"]) == 0
  )
  text = (tmp_path / "out/x.md").read_text()
  # step 30: 120 rows, 30 × 4 × 50 = 6,000 real tokens; acc 0.25 of 200 = 50/200 with its Wilson
  # interval
  assert "| coconut | 30 | 120 | 0.0M | 25.0% (19.5%–31.4%) |" in text
  assert "| cot | 60 | 240 |" in text and "coconut 2.0 min to step 60" in text
  assert (tmp_path / "out/x.png").stat().st_size > 10_000
