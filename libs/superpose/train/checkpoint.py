"""Checkpoints of the train state, and stopping cleanly on SIGTERM. The only module that imports
orbax.

A train state is a dict ``{'params': ..., 'opt_state': ..., 'step': ...}`` of jax.Arrays. A step
directory holds one orbax item per part, so that ``params`` can be read alone (``init_from``):

    WORKDIR/checkpoints/<step>/params     model weights
                              /opt_state  optimizer state
                              /extra      every other top-level entry of the state (``step``, ...)
                              /meta       JSON: the step, the data position, anything json-able
                              /checksums  JSON: a content checksum, shape and dtype of every array
                                          above

Restore reads the arrays and checks them against ``checksums`` (superpose.train.integrity): a step
whose files changed after the save (a flipped bit, a torn copy) is skipped like an unreadable one,
with the reason logged, and the previous step is used. A step saved before checksums existed is read
unverified.

orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it when every item is
committed, so a process killed mid-save leaves only a tmp folder, which step listing ignores and the
next writer deletes. Restore reads straight onto the shardings of an abstract target, which may live
on another mesh than the one that saved.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import sys
import threading
from typing import Any, Callable, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AbstractMesh, NamedSharding

from superpose.train import integrity, state as state_lib

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
PARAMS, OPT_STATE, EXTRA, META, CHECKSUMS = "params", "opt_state", "extra", "meta", "checksums"


class CheckpointError(RuntimeError):
  """No checkpoint of a directory could be read."""


class CheckpointMismatch(CheckpointError):
  """A checkpoint holds arrays of other shapes than the restore target (another model or
  optimizer)."""


class CorruptCheckpoint(CheckpointError):
  """A step's arrays read back with other contents than were saved."""


def checkpoint_dir(workdir: str | os.PathLike) -> pathlib.Path:
  """Where a run keeps its checkpoints: ``WORKDIR/checkpoints``."""
  return pathlib.Path(workdir) / CHECKPOINT_SUBDIR


# --- logging: orbax logs several INFO lines per save through absl, which floods runs under
# absl.app.

_ORBAX_DIR = os.path.dirname(ocp.__file__)


class _DropOrbaxInfo(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.pathname.startswith(_ORBAX_DIR)


def _from_orbax(exc: BaseException | None) -> bool:
  """Whether an exception was raised inside orbax (a frame of its traceback is in orbax)."""
  tb = exc.__traceback__ if exc is not None else None
  while tb is not None:
    if tb.tb_frame.f_code.co_filename.startswith(_ORBAX_DIR):
      return True
    tb = tb.tb_next
  return False


# Step directories whose failed read ``restore`` has reported: later errors naming them are echoes.
_FAILED_READS: set[str] = set()


def _is_failed_read(exc: BaseException | None) -> bool:
  """Whether an exception comes from a read that has already failed and been reported: raised inside
  orbax, or (tensorstore's futures carry no Python frames) naming a step directory in
  ``_FAILED_READS``."""
  if exc is None:
    return False
  return _from_orbax(exc) or any(path in str(exc) for path in _FAILED_READS)


class _DropReadEchoes(logging.Filter):
  """asyncio's "Task / Future exception was never retrieved" for one of orbax's failed reads: an
  echo of a failure ``restore`` has already reported (see ``_drop_closed_loop_echo``)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.exc_info and _is_failed_read(record.exc_info[1]))


_ORBAX_FILTER = _DropOrbaxInfo()
_ECHO_FILTER = _DropReadEchoes()
_VERBOSE = [False]


def set_orbax_verbose(verbose: bool) -> None:
  """Show (True) or hide (False, the default) orbax's records below WARNING and its echoes of failed
  reads."""
  _VERBOSE[0] = verbose
  for name in (
    "absl",
    "",
  ):  # most of orbax logs through absl, a few modules through the root logger
    logger = logging.getLogger(name)
    if verbose:
      logger.removeFilter(_ORBAX_FILTER)
    elif _ORBAX_FILTER not in logger.filters:
      logger.addFilter(_ORBAX_FILTER)
  asyncio_logger = logging.getLogger("asyncio")  # its records reach the root's handlers unfiltered
  if verbose:
    asyncio_logger.removeFilter(_ECHO_FILTER)
  elif _ECHO_FILTER not in asyncio_logger.filters:
    asyncio_logger.addFilter(_ECHO_FILTER)


set_orbax_verbose(False)


# orbax stops reading a step at the first failed chunk; tensorstore finishes the other reads later
# and reports each to orbax's closed event loop ("Event loop is closed"), and the reads' coroutines
# raise their own errors again when they are collected, each a traceback through sys.unraisablehook.
# The failure itself is logged once by ``restore``; these echoes are dropped (shown with verbose
# logging).
_previous_unraisablehook = sys.unraisablehook


def _is_read_echo(unraisable) -> bool:
  exc, obj = unraisable.exc_value, unraisable.object
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return True
  code = getattr(obj, "cr_code", None)  # a coroutine of orbax's
  return (code is not None and code.co_filename.startswith(_ORBAX_DIR)) or _is_failed_read(exc)


def _drop_closed_loop_echo(unraisable) -> None:
  if _VERBOSE[0] or not _is_read_echo(unraisable):
    _previous_unraisablehook(unraisable)


sys.unraisablehook = _drop_closed_loop_echo


# --- state <-> orbax items


def _to_items(state: dict[str, Any]) -> dict[str, Any]:
  if not isinstance(state, dict) or PARAMS not in state:
    raise TypeError(f"a train state is a dict with a '{PARAMS}' entry, got {type(state).__name__}")
  items = {k: state[k] for k in (PARAMS, OPT_STATE) if k in state}
  extra = {k: v for k, v in state.items() if k not in items}
  if extra:  # StandardSave refuses bare arrays (the step scalar), so they travel inside a dict
    items[EXTRA] = extra
  return items


def _from_items(items: dict[str, Any]) -> dict[str, Any]:
  state = {k: items[k] for k in (PARAMS, OPT_STATE) if k in items}
  state.update(items.get(EXTRA, {}))
  return state


def _check_target(target: Any) -> None:
  """Fail with a readable message where orbax would fail with an obscure one."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    where = jax.tree_util.keystr(path)
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
      raise ValueError(
        f"restore target {where} has no sharding; pass jax.ShapeDtypeStruct(..., sharding=...)"
      )
    if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, AbstractMesh):
      raise ValueError(
        f"restore target {where} is sharded on an AbstractMesh; build it on a concrete "
        "Mesh (nnx.get_abstract_model(fn, mesh) or NamedSharding(mesh, spec))"
      )


def _short(err: BaseException) -> str:
  # orbax wraps tensorstore's error (which names the file and the failure) in one that prints the
  # whole TensorStore spec: report the innermost error's first line.
  seen = {id(err)}
  while (err.__cause__ or err.__context__) is not None and id(
    err.__cause__ or err.__context__
  ) not in seen:
    err = err.__cause__ or err.__context__
    seen.add(id(err))
  text = str(err).strip().splitlines()
  first = text[0].split(" See full TensorStore details")[0][:300] if text else ""
  return f"{type(err).__name__}: {first}"


def _all_processes(ok: bool) -> bool:
  """True when ``ok`` holds on every process, so that all of them take the same branch."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class Checkpointer:
  """Saves and restores train states in one directory, keeping the newest ``max_to_keep`` steps.

  ``save_interval_steps``: when set, ``save`` skips steps that are not a multiple of it unless
  ``force``; when None, every call saves. ``read_only``: never writes nor cleans up (for readers of
  a directory that a live run may be writing). ``checksums``: write content checksums with each step
  and verify them on restore (False only to measure what they cost). Every process of a
  multi-process job calls every method.
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    max_to_keep: int | None = 3,
    async_save: bool = True,
    save_interval_steps: int | None = None,
    read_only: bool = False,
    checksums: bool = True,
  ):
    self.directory = pathlib.Path(directory).absolute()
    self._interval = save_interval_steps
    self._checksums = checksums
    self._read_only = read_only
    self._last_saved: int | None = None
    self._unreadable: set[int] = set()  # newer steps skipped by the last restore
    # Read-only is enforced here rather than with orbax's read_only option, which warns on every
    # use.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=not read_only,
      # tmp folders of saves killed mid-way; a reader must not delete a live writer's save in
      # progress
      cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  # -- steps

  def all_steps(self) -> list[int]:
    """Steps saved (finalised, or being saved asynchronously by this object), oldest first."""
    if self._read_only:  # another process may be writing: list the disk again
      self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  # -- save

  def save(
    self, step: int, state: dict[str, Any], *, meta: dict | None = None, force: bool = False
  ) -> bool:
    """Start saving ``state`` as ``step``; returns whether a save was started.

    Returns once the arrays are copied off the devices, so the caller may donate them to the next
    train step; the files are written in the background (see ``wait``).
    """
    if self._read_only:
      raise ValueError(f"{self.directory} was opened read-only")
    step = int(step)
    if step == self._last_saved:  # e.g. a periodic save and the save on stop at the same step
      return False
    if not force and self._interval and step % self._interval:
      return False
    meta = {"step": step, **(meta or {})}
    json.dumps(meta)  # a non-json value fails here, not later in a background thread
    self._drop_unreadable()
    latest = self.latest_step()
    if latest is not None and step <= latest:
      # orbax would skip such a save silently (or refuse it when forced).
      raise ValueError(
        f"cannot save step {step} in {self.directory}: it already holds step {latest}. "
        "Resume from the newest step or use a new workdir."
      )
    # a part without arrays (optax.sgd's EmptyStates) is rebuilt from the restore target instead
    items = {k: v for k, v in _to_items(state).items() if jax.tree.leaves(v)}
    args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
    args[META] = ocp.args.JsonSave(meta)
    if self._checksums:  # computed where the arrays live, before the caller may donate them
      args[CHECKSUMS] = ocp.args.JsonSave(integrity.checksums(items))
    self._manager.save(step, args=ocp.args.Composite(**args), force=True)
    self._last_saved = step
    return True

  def _drop_unreadable(self) -> None:
    # Steps that the restore fell back past would hide the steps this run saves now (orbax lists by
    # step number), so the first save after such a restore deletes them.
    for step in sorted(self._unreadable & set(self.all_steps())):
      log.warning(
        "deleting unreadable checkpoint step %d in %s before saving newer work",
        step,
        self.directory,
      )
      self._manager.delete(step)
    self._unreadable.clear()

  # -- restore

  def restore(
    self, target: dict[str, Any], step: int | None = None
  ) -> tuple[int, dict[str, Any], dict]:
    """Read a step onto ``target`` (jax.ShapeDtypeStructs with shardings); returns (step, state,
    meta).

    ``target`` names the parts to read (``{'params': ...}`` alone reads only the weights). With
    ``step=None`` the newest readable step is read: an unreadable one is logged and skipped.
    """
    _check_target(target)
    self._manager.wait_until_finished()
    steps = self.all_steps()
    if step is not None and step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory} (steps: {steps})")
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    candidates = [step] if step is not None else steps[::-1]
    failures = []
    for s in candidates:
      error = None
      try:
        state, meta = self._restore_step(s, target)
      except Exception as e:  # noqa: BLE001 - any failure to read makes the step unreadable
        error = e
        _FAILED_READS.add(os.path.join(str(self.directory), str(s), ""))
      if _any_process(
        isinstance(error, CheckpointMismatch)
      ):  # another model: older steps will not fit either
        raise (
          error
          if isinstance(error, CheckpointMismatch)
          else CheckpointMismatch(
            f"checkpoint step {s} in {self.directory} does not fit the restore target (seen by "
            "another process)"
          )
        )
      if _all_processes(error is None):
        self._unreadable = {f for f, _ in failures}
        return s, state, meta
      reason = _short(error) if error else "another process could not read it"
      if step is not None:
        raise CheckpointError(
          f"checkpoint step {s} in {self.directory} is unreadable: {reason}"
        ) from error
      log.warning(
        "checkpoint step %d in %s is unreadable (%s); falling back to an older step",
        s,
        self.directory,
        reason,
      )
      failures.append((s, reason))
    raise CheckpointError(
      f"no readable checkpoint in {self.directory} (left as it is): "
      + "; ".join(f"step {s}: {r}" for s, r in failures)
    )

  def _restore_step(self, step: int, target: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    items = _to_items(target)
    arrays = {k: v for k, v in items.items() if jax.tree.leaves(v)}
    saved = self._saved_checksums(step)
    if saved is not None:
      wrong = integrity.shape_mismatches(arrays, saved)
      if wrong:
        raise CheckpointMismatch(
          f"checkpoint step {step} in {self.directory} holds arrays of other shapes than "
          f"this run's model and optimizer build: {wrong[0]}"
          + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
        )
    args = {k: ocp.args.StandardRestore(v) for k, v in arrays.items()}
    restored = self._manager.restore(
      step, args=ocp.args.Composite(**args, **{META: ocp.args.JsonRestore()})
    )
    if saved is not None:
      bad = integrity.mismatches({k: restored[k] for k in args}, saved)
      if bad:
        raise CorruptCheckpoint(
          f"content checksum mismatch in {bad[0]}"
          + (f" and {len(bad) - 1} more arrays" if len(bad) > 1 else "")
          + ": its files changed after the save"
        )
    elif self._checksums:
      log.warning(
        "checkpoint step %d in %s has no checksums (saved by an older version); read unverified",
        step,
        self.directory,
      )
    return _from_items({k: restored[k] if k in args else v for k, v in items.items()}), dict(
      restored[META]
    )

  def _saved_checksums(self, step: int) -> dict | None:
    if not self._checksums or not (self.directory / str(step) / CHECKSUMS).is_dir():
      return None
    return dict(
      self._manager.restore(step, args=ocp.args.Composite(**{CHECKSUMS: ocp.args.JsonRestore()}))[
        CHECKSUMS
      ]
    )

  # -- lifetime

  def wait(self) -> None:
    """Block until the background writes are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def steps_on_disk(directory: str | os.PathLike) -> list[int]:
  """The finalised steps in a checkpoint directory, oldest first, read from the file system alone
  (no orbax, no collective: safe from any thread, e.g. to say what is on disk when a run ends
  badly)."""
  try:
    return sorted(
      int(p.name) for p in pathlib.Path(directory).iterdir() if p.name.isdigit() and p.is_dir()
    )
  except OSError:
    return []


def _resolve(path: pathlib.Path) -> tuple[pathlib.Path, int | None]:
  """(checkpoint directory, step or None) for a workdir, a checkpoint directory or a step
  directory."""
  if not path.exists():
    raise FileNotFoundError(f"init_from: {path} does not exist")
  if checkpoint_dir(path).is_dir():
    return checkpoint_dir(path), None
  if path.name.isdigit() and (path / PARAMS).is_dir():
    return path.parent, int(path.name)
  if path.is_dir() and any(p.name.isdigit() and p.is_dir() for p in path.iterdir()):
    return path, None
  raise FileNotFoundError(
    f"init_from: no checkpoint found at {path} (expected a workdir holding "
    f"{CHECKPOINT_SUBDIR}/, a checkpoint directory of step folders, or a step folder)"
  )


def load_params(path: str | os.PathLike, target_params: Any) -> Any:
  """Only the weights of a checkpoint (``init_from``), read onto ``target_params``' shardings.

  ``path``: a workdir, its checkpoint directory (newest readable step) or one step's directory.
  """
  directory, step = _resolve(pathlib.Path(path).absolute())
  with Checkpointer(directory, read_only=True) as ckpt:
    _, state, _ = ckpt.restore({PARAMS: target_params}, step=step)
  return state[PARAMS]


def run_config(workdir: str | os.PathLike) -> dict:
  """The config.json a training run wrote into its workdir."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{workdir}: no config.json (not a training run directory)")
  return json.loads(path.read_text("utf-8"))


def restore_module(make: Callable[[], Any], path: str | os.PathLike) -> tuple[Any, Any]:
  """(graphdef, params) of the module ``make()`` builds (traced abstractly, never initialised) with
  the parameters of the checkpoint at ``path`` (as :func:`load_params`), on the first local device.
  ``nnx.merge(graphdef, params)`` gives the module."""
  graphdef, abstract, _ = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), state_lib.pure_dict(abstract)
  )
  return graphdef, load_params(path, target)


# --- preemption


class PreemptionGuard:
  """Turns SIGTERM (by default) into a request to stop that every process honours at the same step.

  Call ``should_stop(step)`` once per step, on every process, with the same steps. One process: it
  is True from the first step after the signal. Several processes: every ``sync_every`` steps the
  processes all-gather their flags (``process_allgather``), and all stop at the first such step at
  which any process was signalled; as all evaluate the same steps and see the same gathered flags,
  they agree by construction. jax's own preemption service (``reached_preemption_sync_point``) is
  not used: its C++ SIGTERM handler is replaced by ours, which also works without
  ``jax.distributed``. ``sync_every > 1`` trades a later stop for fewer host syncs.
  """

  def __init__(self, signals: Iterable[int] = (signal.SIGTERM,), sync_every: int = 1):
    self._flag = threading.Event()
    self._stopping = False
    self._sync_every = max(1, int(sync_every))
    self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

  def _handle(self, signum, frame) -> None:
    self._flag.set()
    previous = self._previous.get(signum)
    if callable(previous):  # keep a handler installed before ours working
      previous(signum, frame)

  def request_stop(self) -> None:
    """Ask to stop as a signal would (for other triggers, e.g. a time limit)."""
    self._flag.set()

  @property
  def requested(self) -> bool:
    """Whether this process was asked to stop (no agreement with the others)."""
    return self._flag.is_set()

  def should_stop(self, step: int) -> bool:
    if self._stopping:
      return True
    if jax.process_count() == 1:
      stop = self._flag.is_set()
    elif int(step) % self._sync_every:
      return False
    else:
      stop = _any_process(self._flag.is_set())
    if stop:
      self._stopping = True
      log.warning("stop requested (signal or request_stop); stopping at step %d", int(step))
    return stop

  def uninstall(self) -> None:
    """Put back the handlers that were installed before."""
    for sig, previous in self._previous.items():
      signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    self._previous = {}

  def __enter__(self) -> "PreemptionGuard":
    return self

  def __exit__(self, *exc) -> None:
    self.uninstall()


def install_sigterm_handler(sync_every: int = 1) -> PreemptionGuard:
  """A PreemptionGuard on SIGTERM (must be called from the main thread)."""
  return PreemptionGuard((signal.SIGTERM,), sync_every=sync_every)
