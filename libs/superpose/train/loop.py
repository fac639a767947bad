"""The train loop shared by every project: resume, steps, eval, metrics, checkpoints, profiling.

A project supplies a *task* (:class:`superpose.train.task.Task`): a data-free spec — the model, the
train and eval losses, the batch it takes — and its data, host batches as a pure function of the
step. Everything else — mesh, sharded state, the jitted step, orbax checkpoints, SIGTERM, NaN guard,
metrics and MFU — lives here once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import statistics
import time
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

from superpose.nn import sharding as shd
from superpose.train import checkpoint as ckpt_lib
from superpose.train import config as config_lib
from superpose.train import flops as flops_lib
from superpose.train import metrics as metrics_lib
from superpose.train import (
  optim,
  peers,
  state as state_lib,
  step as step_lib,
  workdir as workdir_lib,
)
from superpose.train.batch_record import RECORD_BATCHES_ENV, BatchRecorder
from superpose.train.task import EvalSet, Field, Task, check_batch
from superpose.train.mesh import make_mesh

log = logging.getLogger(__name__)


class RowsEvalSet:
  """Fixed evaluation rows (dicts of equally shaped arrays) in batches of ``batch_size``. Each batch
  gets a ``scale`` entry: ``num_batches / n`` on real rows and 0 on the padding rows (copies of
  row 0) that fill the last batch, so the loop's mean over batches of a task's Σ(metric · scale) is
  the mean over the ``n`` rows."""

  def __init__(self, rows: list[dict[str, np.ndarray]], batch_size: int):
    if not rows:
      raise ValueError("RowsEvalSet: no rows")
    self.rows, self.n, self.batch_size = rows, len(rows), batch_size
    self.num_batches = math.ceil(self.n / batch_size)

  def batch(self, i: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    local = self.batch_size // process_count
    idx = [i * self.batch_size + process_index * local + r for r in range(local)]
    picked = [self.rows[j if j < self.n else 0] for j in idx]
    out = {k: np.stack([r[k] for r in picked]) for k in picked[0]}
    out["scale"] = np.array(
      [self.num_batches / self.n if j < self.n else 0.0 for j in idx], np.float32
    )
    return out


class RowsStream:
  """Training batches assembled row by row: global row g of step s (1-based) is ``row(g)`` with
  g = (s − 1)·batch_size + r, a dict of equally shaped arrays; each process builds only its share of
  the rows. A task's ``train_batch`` when its rows are a pure function of their global index (the
  counterpart of :class:`RowsEvalSet`)."""

  def __init__(self, row, batch_size: int):
    self.row, self.batch_size = row, batch_size

  def train_batch(
    self, step: int, process_index: int = 0, process_count: int = 1
  ) -> dict[str, np.ndarray]:
    local = self.batch_size // process_count
    first = (step - 1) * self.batch_size + process_index * local
    rows = [self.row(first + r) for r in range(local)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class NonFiniteLoss(FloatingPointError):
  pass


@dataclasses.dataclass
class Result:
  step: int
  eval: dict[str, float]
  tokens_per_s: float
  mfu: float
  resumed_from: int | None


def _global_batch(
  host: dict[str, np.ndarray], shardings: Mapping[str, NamedSharding], process_count: int
):
  out = {}
  for k, x in host.items():
    shape = (x.shape[0] * process_count,) + x.shape[1:]
    out[k] = jax.make_array_from_process_local_data(shardings[k], x, shape)
  return out


def _batch_shardings(fields: Mapping[str, Field], mesh) -> dict[str, NamedSharding]:
  """The sharding of each batch entry, from its global shape and logical axes."""
  return {
    k: NamedSharding(mesh, shd.spec_for(f.logical_axes(), f.shape, mesh, what=f"batch/{k}"))
    for k, f in fields.items()
  }


def _eval_fields(spec, example: Mapping[str, np.ndarray], process_count: int) -> dict[str, Field]:
  """Fields of the eval batches (their own keys and shapes; axes of a key the train batch
  shares)."""
  train = spec.batch_spec()
  return {
    k: Field(
      (x.shape[0] * process_count,) + x.shape[1:],
      str(x.dtype),
      train[k].axes if k in train and len(train[k].shape) == x.ndim else None,
    )
    for k, x in example.items()
  }


def evaluate(
  eval_fn, params, eval_set: EvalSet, shardings, pidx: int, pcount: int
) -> dict[str, float]:
  sums: dict[str, float] = {}
  for i in range(eval_set.num_batches):
    m = jax.device_get(
      eval_fn(params, _global_batch(eval_set.batch(i, pidx, pcount), shardings, pcount))
    )
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  out = {f"eval/{k}": v / eval_set.num_batches for k, v in sums.items()}
  if "eval/loss" in out:
    out["eval/perplexity"] = math.exp(min(out["eval/loss"], 50.0))
  return out


def _on_disk(directory) -> str:
  """What a run that ends badly leaves to resume from (read from the file system, true when it is
  said)."""
  steps = ckpt_lib.steps_on_disk(directory)
  if not steps:
    return f"no checkpoint on disk in {directory}"
  return f"the newest checkpoint on disk is step {steps[-1]} ({directory})"


def train(config: Any, workdir: str | pathlib.Path, task: Task) -> Result:
  cfg = config_lib.to_dict(config)
  t = cfg["train"]
  workdir = pathlib.Path(workdir)
  # Nothing is written to the workdir before the run is accepted: a usable directory, a config that
  # may continue the one recorded there, and a state created or restored.
  workdir_lib.check_writable(workdir)
  changes = workdir_lib.check_resume(workdir, cfg)
  for key, (old, new, kind) in changes.items():
    log.log(
      logging.WARNING if kind == "safe" else logging.INFO,
      "config change on resume: %s %r → %r",
      key,
      old,
      new,
    )
  config_lib.check_mesh(cfg, jax.device_count())
  mesh = make_mesh(cfg["mesh"]["ici"], cfg["mesh"]["dcn"])
  rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in cfg["sharding"]["rules"])
  ckpt_dir = ckpt_lib.checkpoint_dir(workdir)
  guard = ckpt_lib.PreemptionGuard(sync_every=t["preemption_check_every"])
  checkpointer = writer = None
  try:
    with jax.set_mesh(mesh), shd.axis_rules(rules):
      spec = task.spec
      graphdef, abs_params, _ = state_lib.split_model(spec.make_model, mesh)
      tx, lr_schedule = optim.make_optimizer(cfg["optim"], abs_params, t["steps"])
      checkpointer = ckpt_lib.Checkpointer(
        ckpt_dir, max_to_keep=t["keep_checkpoints"], async_save=t["async_checkpoint"]
      )
      resumed_from = checkpointer.latest_step()
      if resumed_from is None:
        progress = Progress()
        params = None
        if t["init_from"]:
          params = ckpt_lib.load_params(t["init_from"], abs_params)
          log.info("init_from: loaded parameters from %s", t["init_from"])
        elif hasattr(spec, "initial_params"):  # e.g. frozen experts loaded from other runs
          params = spec.initial_params(abs_params)
        state, state_sh = state_lib.create(spec.make_model, tx, abs_params, mesh, params=params)
      else:
        abstract = state_lib.abstract_state(tx, abs_params, mesh)
        state_sh = jax.tree.map(lambda a: a.sharding, abstract)
        resumed_from, state, restored_meta = checkpointer.restore(abstract)
        progress = Progress.resumed(restored_meta)
        log.info("resumed from checkpoint step %d", resumed_from)
      start = int(jax.device_get(state["step"]))

      # Accepted: from here on the run writes its record.
      changed = workdir_lib.jsonable(changes)
      metrics_lib.write_run_metadata(workdir, cfg, mesh, {"config_changes": changed})
      writer = metrics_lib.MetricWriter(workdir, start_step=start)
      start_row = {
        "event": "start",
        "resumed_from": resumed_from if resumed_from is not None else -1,
      }
      if changes:
        start_row["config_changes"] = changed
      writer.write(start, start_row)
      peers.describe_disk_with(lambda: _on_disk(ckpt_dir) + "; rerun every process to resume")
      result = _run(
        cfg,
        workdir,
        task,
        mesh,
        graphdef,
        abs_params,
        tx,
        lr_schedule,
        state,
        state_sh,
        start,
        resumed_from,
        checkpointer,
        writer,
        guard,
        progress,
      )
  except Exception as e:
    if peers.is_collective_failure(e):  # a dead peer ends this process in there, with one line
      peers.await_verdict()
    if not isinstance(e, NonFiniteLoss):
      raise
    if checkpointer is not None:
      checkpointer.wait()
    raise NonFiniteLoss(
      f"{e}; {_on_disk(ckpt_dir)}"
      + (
        ": rerun to resume from it (a lower lr needs --config.train.allow_changes=True)"
        if ckpt_lib.steps_on_disk(ckpt_dir)
        else " (none was saved before this step)"
      )
    ) from None
  finally:
    peers.describe_disk_with(None)
    peers.stop_watchdog()  # training is over: processes may now finish at different times
    if checkpointer is not None:
      checkpointer.wait()
      checkpointer.close()
    if writer is not None:
      writer.close()
    guard.uninstall()
  return result


class Progress:
  """How far a run has come over all its sessions: the step reached, the training wall time summed
  over sessions (each from its accepted start to its last checkpoint) and the number of sessions.
  Carried in every checkpoint's metadata and written to ``progress.json`` at each checkpoint."""

  def __init__(self, wall_time_s: float = 0.0, sessions: int = 1):
    self.before, self.sessions, self.since = float(wall_time_s), int(sessions), time.monotonic()

  @classmethod
  def resumed(cls, meta: Mapping | None) -> "Progress":
    meta = meta or {}
    return cls(meta.get("wall_time_s", 0.0), int(meta.get("sessions", 0)) + 1)

  def meta(self, step: int, total: int) -> dict:
    return {
      "step": step,
      "steps": total,
      "wall_time_s": round(self.before + time.monotonic() - self.since, 3),
      "sessions": self.sessions,
    }

  def write(self, workdir: pathlib.Path, meta: Mapping) -> None:
    """``progress.json``: ``meta`` (as saved with the checkpoint), the time written, finished or
    not."""
    if jax.process_index() == 0:
      out = {
        **meta,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished": meta["step"] >= meta["steps"],
      }
      tmp = workdir / "progress.json.tmp"
      tmp.write_text(json.dumps(out, indent=1) + "\n")
      os.replace(tmp, workdir / "progress.json")


def _run(
  cfg,
  workdir,
  task,
  mesh,
  graphdef,
  abs_params,
  tx,
  lr_schedule,
  state,
  state_sh,
  start,
  resumed_from,
  checkpointer,
  writer,
  guard,
  progress: Progress,
) -> Result:
  """The steps from ``start + 1`` on, with evals, checkpoints, profiling and metrics."""
  t = cfg["train"]
  pidx, pcount = jax.process_index(), jax.process_count()
  spec, data = task.spec, task.data
  fields = spec.batch_spec()
  example = data.train_batch(start + 1, pidx, pcount)
  check_batch(example, fields, pcount, f"train batch of step {start + 1}")
  batch_sh = _batch_shardings(fields, mesh)
  train_step = step_lib.jit_train_step(
    step_lib.make_train_step(graphdef, spec.train_loss, tx, t["accum_steps"]), state_sh, batch_sh
  )
  eval_set = getattr(data, "eval_set", None)
  eval_sh = (
    _batch_shardings(_eval_fields(spec, eval_set.batch(0, pidx, pcount), pcount), mesh)
    if eval_set is not None
    else None
  )
  eval_fn = jax.jit(
    step_lib.make_eval_step(graphdef, spec.eval_loss), in_shardings=(state_sh["params"], eval_sh)
  )
  peak = flops_lib.Peak(jax.device_count())
  log.info(
    "mesh %s; %d parameters; FLOPs/step %.3g; peak %.3g FLOP/s (%s)",
    dict(mesh.shape),
    sum(math.prod(a.shape) for a in jax.tree.leaves(abs_params)),
    spec.flops_per_step,
    peak.total,
    peak.source,
  )

  reporter = _Reporter(writer, _progress(t, start, pidx), t, lr_schedule, spec, peak)
  recorder = BatchRecorder(workdir, pidx, pcount) if os.environ.get(RECORD_BATCHES_ENV) else None
  # Processes that share a host (and so a hostname) would overwrite each other's trace files.
  profile_dir = workdir / "profile" if pcount == 1 else workdir / "profile" / f"process_{pidx}"
  pending = None
  last_eval: dict[str, float] = {}
  profiling = False
  p_first, p_last = tuple(t["profile_steps"])
  try:
    for step in range(start + 1, t["steps"] + 1):
      if p_last and step == p_first:
        jax.profiler.start_trace(str(profile_dir))
        profiling = True
      if step == start + 1:
        host = example
      else:
        host = data.train_batch(step, pidx, pcount)
        check_batch(host, fields, pcount, f"train batch of step {step}")
      if recorder is not None:
        recorder.record(step, host, batch_sh)
      batch = _global_batch(host, batch_sh, pcount)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = train_step(state, batch)
      # Fetch the metrics of the previous step only now, so the host never waits on the device.
      reporter.report(pending)
      pending = (step, metrics, step_lib.hash_batch(host) if t["log_batch_hash"] else None)
      if profiling and step == p_last:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        profiling = False
        log.info("profiler trace of steps %d..%d written to %s", p_first, p_last, profile_dir)
      stop = guard.should_stop(step)
      is_last = step == t["steps"]
      if (
        eval_set is not None
        and t["eval_every"]
        and (step % t["eval_every"] == 0 or is_last or stop)
      ):
        reporter.report(pending)
        pending = None
        last_eval = evaluate(eval_fn, state["params"], eval_set, eval_sh, pidx, pcount)
        writer.write(step, last_eval)
        reporter.print(f"step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
        reporter.interrupted()
      if (t["checkpoint_every"] and step % t["checkpoint_every"] == 0) or is_last or stop:
        reporter.report(pending)
        pending = None
        now = progress.meta(step, t["steps"])
        checkpointer.save(
          step, state, meta={**now, "seed": cfg["seed"], "next_step": step + 1}, force=True
        )
        progress.write(workdir, now)
        peak.remeasure()  # the step timer restarts after a checkpoint anyway
        reporter.interrupted()
      if stop:
        log.warning("stopping at step %d on SIGTERM; checkpoint saved", step)
        break
    reporter.report(pending)
    if start >= t["steps"] and eval_set is not None:  # a finished run, rerun: evaluate it again
      last_eval = evaluate(eval_fn, state["params"], eval_set, eval_sh, pidx, pcount)
      reporter.print(
        f"step {start} (finished run): " + "  ".join(f"{k} {v:.4f}" for k, v in last_eval.items())
      )
  finally:
    if profiling:
      jax.profiler.stop_trace()
    reporter.close()
    if recorder is not None:
      recorder.close()

  step_time = statistics.median(reporter.step_times) if reporter.step_times else float("nan")
  tok_s = spec.tokens_per_step / step_time
  mfu = spec.flops_per_step / step_time / peak.total
  return Result(
    step=int(jax.device_get(state["step"])),
    eval=last_eval,
    tokens_per_s=tok_s,
    mfu=mfu,
    resumed_from=resumed_from,
  )


def _progress(t, start, pidx):
  if not t["progress"] or pidx != 0:
    return None
  from tqdm.auto import tqdm

  return tqdm(
    total=t["steps"], initial=start, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0
  )


class _Reporter:
  """Turns step metrics into JSONL/TensorBoard rows, the progress bar and step times.

  A step's time is the wall time between two successive metric fetches; intervals that contain a
  compilation, an eval or a checkpoint are marked by :meth:`interrupted` and not timed."""

  def __init__(self, writer, bar, t, lr_schedule, spec, peak: flops_lib.Peak):
    self.writer, self.bar, self.t, self.lr, self.spec, self.peak = (
      writer,
      bar,
      t,
      lr_schedule,
      spec,
      peak,
    )
    self.step_times: list[float] = []
    self.t_last = time.perf_counter()
    self.clean = False

  def interrupted(self) -> None:
    self.clean, self.t_last = False, time.perf_counter()

  def print(self, msg: str) -> None:
    if self.bar is not None:
      self.bar.write(msg)
    else:
      log.info(msg)

  def report(self, pending) -> None:
    """Fetch and log the metrics of a finished step (``pending`` = (step, metrics, batch hash))."""
    if pending is None:
      return
    step, metrics, batch_hash = pending
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    dt, timed = now - self.t_last, self.clean
    self.clean, self.t_last = True, now
    if not m.pop("finite", 1):
      # train() adds what is on disk once the pending saves are written.
      raise NonFiniteLoss(
        f"non-finite loss or gradient at step {step} (loss {m.get('loss')}, grad_norm "
        f"{m.get('grad_norm')}): the update was skipped and training stopped"
      )
    m["lr"] = float(self.lr(step - 1))
    if timed:
      self.step_times.append(dt)
      m.update(
        {
          "perf/step_time_s": dt,
          "perf/tokens_per_s": self.spec.tokens_per_step / dt,
          "perf/mfu": self.peak.mfu(self.spec.flops_per_step / dt),
        }
      )
    if batch_hash is not None:
      m["batch_hash"] = batch_hash
    self.writer.write(step, m)
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      post = {"loss": f"{m['loss']:.4f}"}
      if timed:
        post.update({"tok/s": f"{m['perf/tokens_per_s']:.0f}", "mfu": f"{m['perf/mfu']:.1%}"})
      self.bar.set_postfix(post, refresh=False)
    elif self.t["log_every"] and step % self.t["log_every"] == 0:
      msg = f"step {step}: loss {m['loss']:.4f} grad_norm {m['grad_norm']:.3f} lr {m['lr']:.2e}"
      if timed:
        msg += f" {m['perf/tokens_per_s']:.0f} tok/s mfu {m['perf/mfu']:.1%}"
      log.info(msg)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
