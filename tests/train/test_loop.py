"""The shared train loop in-process: NaN guard, accumulation, init_from, profiler, metrics files."""

import json
import math

import jax
import numpy as np
import pytest

from configs.lm import tiny
from superpose.data import lm as lm_data, packing
from superpose.train import (
  checkpoint,
  config as config_lib,
  lm,
  loop,
  optim,
  state as state_lib,
  step as step_lib,
)
from superpose.train.task import Task
from superpose.train.mesh import make_mesh
from superpose.train.metrics import read_metrics


def _cfg(**train):
  cfg = config_lib.to_dict(tiny.get_config("smoke"))
  cfg["mesh"]["ici"] = (2, 2, 2)
  cfg["train"].update(
    dict(progress=False, eval_every=0, checkpoint_every=0, async_checkpoint=False), **train
  )
  return cfg


class PoisonedData(lm.LMData):
  """Step ``poison_step`` gets NaN loss weights."""

  poison_step = 3

  def train_batch(self, step, pidx, pcount):
    b = super().train_batch(step, pidx, pcount)
    if step == self.poison_step:
      b["weights"] = np.full_like(b["weights"], np.nan)
    return b


def _poisoned(cfg) -> Task:
  spec = lm.make_spec(cfg)
  return Task(spec, PoisonedData(cfg, spec.model_cfg))


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, devices8):
  cfg = _cfg(steps=6, checkpoint_every=2)
  with pytest.raises(
    loop.NonFiniteLoss,
    match="non-finite loss or gradient at step 3 .* training stopped; "
    "the newest checkpoint on disk is step 2",
  ):
    loop.train(cfg, tmp_path, _poisoned(cfg))
  ck = checkpoint.Checkpointer(checkpoint.checkpoint_dir(tmp_path))
  assert ck.all_steps() == [2]
  ck.close()
  steps = [r["step"] for r in read_metrics(tmp_path) if "loss" in r]
  assert steps == [1, 2]  # step 3 is reported by the exception, not logged as a result


def _single_device(optim_cfg):
  """(task, mesh, graphdef, tx, fresh state) on one device."""
  task = lm.make_task(_cfg())
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    graphdef, abs_params, _ = state_lib.split_model(task.spec.make_model, mesh)
    tx, _ = optim.make_optimizer(optim_cfg, abs_params, 10)
    state, _ = state_lib.create(task.spec.make_model, tx, abs_params, mesh)
  return task, mesh, graphdef, tx, state


def test_non_finite_step_leaves_state_unchanged(devices8):
  task, mesh, graphdef, tx, state = _single_device({"lr": 1e-2})
  with jax.set_mesh(mesh):
    step = jax.jit(step_lib.make_train_step(graphdef, task.spec.train_loss, tx))
    b = task.data.train_batch(1, 0, 1)
    b["weights"] = np.full_like(b["weights"], np.inf)
    new, m = step(state, b)
    assert int(m["finite"]) == 0 and int(new["step"]) == 0
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(new)):
      np.testing.assert_array_equal(x, y)


def test_gradient_accumulation_matches_full_batch(devices8):
  task, mesh, graphdef, tx, state = _single_device({"lr": 1e-2, "schedule": "constant"})
  with jax.set_mesh(mesh):
    b = task.data.train_batch(1, 0, 1)
    full, m1 = jax.jit(step_lib.make_train_step(graphdef, task.spec.train_loss, tx, 1))(state, b)
    acc, m4 = jax.jit(step_lib.make_train_step(graphdef, task.spec.train_loss, tx, 4))(state, b)
  np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m1["grad_norm"]), float(m4["grad_norm"]), rtol=1e-4)
  # Adam's first step is ≈ lr · sign(g): compare to a tolerance well below lr (1e-2); entries whose
  # gradient is ~0 may flip sign between summation orders.
  for x, y in zip(jax.tree.leaves(full["params"]), jax.tree.leaves(acc["params"])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5)


def test_run_outputs_and_init_from(tmp_path, devices8):
  first = tmp_path / "first"
  cfg = _cfg(steps=4, eval_every=2, checkpoint_every=2, profile_steps=(2, 3))
  res = loop.train(cfg, first, lm.make_task(cfg))
  assert res.step == 4 and math.isfinite(res.eval["eval/loss"])
  assert res.eval["eval/perplexity"] == pytest.approx(math.exp(res.eval["eval/loss"]))
  meta = json.loads((first / "run.json").read_text())
  assert (
    meta["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    and meta["versions"]["jax"] == jax.__version__
  )
  assert meta["config"]["train"]["steps"] == 4
  assert list((first / "tensorboard").glob("events.out.tfevents.*"))
  assert list((first / "profile").rglob("*.xplane.pb"))
  rows = read_metrics(first)
  assert [r["step"] for r in rows if "eval/loss" in r] == [2, 4]

  # init_from: parameters only — the new run starts at step 1 from the first run's weights.
  second = tmp_path / "second"
  cfg2 = _cfg(steps=1, init_from=str(first))
  cfg2["optim"]["lr"] = 0.0
  task2 = lm.make_task(cfg2)
  loop.train(cfg2, second, task2)
  starts = [r for r in read_metrics(second) if r.get("event") == "start"]
  assert starts == [{**starts[0], "step": 0, "resumed_from": -1}]
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    _, abs_params, _ = state_lib.split_model(task2.spec.make_model, mesh)
    p1 = jax.device_get(checkpoint.load_params(first, abs_params))
    p2 = jax.device_get(checkpoint.load_params(second, abs_params))
  for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):  # lr 0: weights unchanged by the step
    np.testing.assert_array_equal(x, y)


def test_packed_documents_train_on_a_mesh(tmp_path, devices8):
  cfg = _cfg(steps=3, eval_every=3)
  cfg["data"]["packing"] = True
  task = lm.make_task(cfg)
  b = task.data.train_batch(1, 0, 1)
  assert b["segment_ids"].min() >= 1 and b["positions"].shape == b["inputs"].shape
  # Rows where one play ends and another begins: positions restart, the last input has no target.
  stream = task.data.train_stream
  rows = np.flatnonzero(stream.segments.max(1) >= 2)
  assert len(rows) > 0
  f = packing.row_features(stream.tokens[rows[:1]], stream.segments[rows[:1]])
  ends = np.flatnonzero(np.diff(f["segment_ids"][0]) > 0)
  assert len(ends) >= 1
  for e in ends:
    assert f["weights"][0, e] == 0 and f["positions"][0, e + 1] == 0
  res = loop.train(cfg, tmp_path, task)
  assert res.step == 3 and math.isfinite(res.eval["eval/loss"])


def test_separate_validation_file(tmp_path):
  import gzip

  val = tmp_path / "val.jsonl.gz"
  with gzip.open(val, "wt") as f:
    f.write(json.dumps({"title": "v", "text": "abc " * 400}) + "\n")
  cfg = _cfg()
  cfg["data"]["val_path"] = str(val)
  task = lm.make_task(cfg)
  # Every document of data.path trains, and validation windows come from the given file only.
  docs = lm_data.load_documents(cfg["data"]["path"])
  assert len(task.data.train_stream.windows.tokens) == sum(len(d["text"]) + 1 for d in docs)
  b = task.data.eval_set.batch(0)
  assert set(np.unique(b["inputs"])) <= {256, ord("a"), ord("b"), ord("c"), ord(" ")}


def test_mfu_never_above_100_percent_when_the_start_up_peak_was_under_measured(
  tmp_path, devices8, monkeypatch
):
  """F11: a CPU peak measured while other work loaded the cores (here: 1 MFLOP/s) must not give MFU
  above 100 %: the rates that the steps reach raise the peak."""
  from superpose.train import flops

  monkeypatch.setattr(
    flops, "device_peak_flops", lambda device=None: (1e6, "measured f32 matmul peak (busy)")
  )
  cfg = _cfg(steps=6)
  res = loop.train(cfg, tmp_path, lm.make_task(cfg))
  mfus = [r["perf/mfu"] for r in read_metrics(tmp_path) if "perf/mfu" in r]
  assert mfus and all(0 < m <= 1.0 for m in mfus), mfus
  assert 0 < res.mfu <= 1.0


def test_peak_is_the_best_of_start_up_and_later_measurements(monkeypatch):
  from superpose.train import flops

  monkeypatch.setattr(
    flops, "device_peak_flops", lambda device=None: (1e9, "measured f32 matmul peak")
  )
  rates = iter([5e9, 2e9])
  monkeypatch.setattr(flops, "measure_cpu_peak", lambda *a, **k: next(rates))
  monkeypatch.setattr(flops.jax, "local_device_count", lambda: 1)
  peak = flops.Peak(num_devices=1, remeasure_every_s=0)
  assert peak.mfu(5e8) == 0.5
  peak.remeasure()  # 5e9 measured later: the start-up figure was low
  assert peak.total == 5e9
  peak.remeasure()  # a lower later figure never lowers it
  assert peak.total == 5e9
  assert peak.mfu(1e10) == 1.0 and peak.total == 1e10
  monkeypatch.setattr(
    flops, "device_peak_flops", lambda device=None: (989e12, "NVIDIA H100 bf16 dense peak")
  )
  table = flops.Peak(num_devices=8, remeasure_every_s=0)
  table.remeasure()  # a chip of the table is never measured
  assert table.total == 8 * 989e12 and table.mfu(989e12) == 0.125


def test_metrics_of_steps_after_the_restart_point_are_dropped(tmp_path, devices8):
  """F10 (the writer): a run that got to step 7 but resumes from checkpoint 5 rewrites metrics.jsonl
  without steps 6 and 7 (and a torn last line), so every step appears once."""
  from superpose.train.metrics import MetricWriter

  w = MetricWriter(tmp_path, tensorboard=False)
  w.write(0, {"event": "start", "resumed_from": -1})
  for step in range(1, 8):
    w.write(step, {"loss": float(step)})
  w.write(5, {"eval/loss": 1.0})
  w.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 8, "lo')  # killed mid-line
  w = MetricWriter(tmp_path, tensorboard=False, start_step=5)
  w.write(5, {"event": "start", "resumed_from": 5})
  for step in (6, 7):
    w.write(step, {"loss": -float(step)})
  w.close()
  rows = read_metrics(tmp_path)
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6, 7]
  assert [r["loss"] for r in rows if r["step"] in (6, 7) and "loss" in r] == [-6.0, -7.0]
  assert [r["resumed_from"] for r in rows if r.get("event") == "start"] == [-1, 5]


def test_progress_is_carried_over_sessions(tmp_path, devices8):
  """A run's step reached and training wall time summed over sessions: progress.json at every
  checkpoint and in the checkpoint's metadata, so a resumed run (another session, another machine)
  continues the count."""
  cfg = _cfg(steps=2, checkpoint_every=2)
  loop.train(cfg, tmp_path, lm.make_task(cfg))
  first = json.loads((tmp_path / "progress.json").read_text())
  assert (first["step"], first["steps"], first["sessions"], first["finished"]) == (2, 2, 1, True)
  assert first["wall_time_s"] > 0
  cfg = _cfg(
    steps=4, checkpoint_every=2
  )  # the same run, continued in a new session with more steps
  loop.train(cfg, tmp_path, lm.make_task(cfg))
  second = json.loads((tmp_path / "progress.json").read_text())
  # the count of sessions and the earlier wall time came back from the resumed checkpoint's metadata
  assert (second["step"], second["sessions"], second["finished"]) == (4, 2, True)
  assert second["wall_time_s"] > first["wall_time_s"]
