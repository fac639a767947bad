"""A run directory: usable before anything is written to it, and its config as the contract of a
resume.

A workdir's ``config.json`` records the config its checkpoints were trained with. A run into a
workdir that holds checkpoints is compared with it key by key before anything is written (without a
checkpoint there is nothing to resume: the run starts over with its own config):

- keys that only steer bookkeeping or layout (:data:`FREE_ON_RESUME`: logging, checkpoint cadence,
  the mesh, the run length ``train.steps``, ...) may change; the changes are logged and recorded in
  the ``start`` row of ``metrics.jsonl``;
- keys whose change keeps the train state's shape (:data:`SAFE_ON_RESUME`: learning rate, schedule,
  Adam constants, accumulation, ...) may change only with ``--config.train.allow_changes=True``;
- every other key (model, data, seed, batch size, sequence length, optimizer structure, project
  sections) defines the run: a resume that changes one is refused, naming the keys.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pathlib
from typing import Any, Mapping

from superpose.train.config import ConfigError, base_config, get_key

CONFIG_FILE = "config.json"

FREE_ON_RESUME = (
  "train.steps",
  "train.progress",
  "train.log_every",
  "train.eval_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.async_checkpoint",
  "train.profile_steps",
  "train.init_from",
  "train.log_batch_hash",
  "train.preemption_check_every",
  "train.allow_changes",
  "mesh.*",
  "sharding.*",
  "distributed",
  "peer_timeout_s",
)
SAFE_ON_RESUME = (
  "optim.lr",
  "optim.schedule",
  "optim.warmup_steps",
  "optim.decay_fraction",
  "optim.min_lr_ratio",
  "optim.b1",
  "optim.b2",
  "optim.eps",
  "optim.weight_decay",
  "optim.clip_norm",
  "optim.groups.*.lr",
  "optim.groups.*.weight_decay",
  "optim.groups.*.clip_norm",
  "train.accum_steps",
  "train.z_loss",
  "train.eval_batches",
)


# Clipping turned on or off adds or removes a part of the optimizer state: not a value change.
def _clipping(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


_SAME_SHAPE = {"clip_norm": lambda a, b: _clipping(a) == _clipping(b)}


def check_writable(workdir: str | os.PathLike) -> None:
  """ConfigError when ``workdir`` cannot be a run directory: a file, under a file, or not
  writable."""
  path = pathlib.Path(workdir).absolute()
  if path.exists() and not path.is_dir():
    raise ConfigError(f"workdir {path} is a file, not a directory")
  existing = path
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise ConfigError(f"workdir {path}: {existing} is a file, not a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    what = "workdir" if existing == path else f"workdir {path}: its parent"
    raise ConfigError(f"{what} {existing} is not writable")
  for name in (CONFIG_FILE, "run.json", "metrics.jsonl", "checkpoints"):
    p = path / name
    if p.exists() and not os.access(p, os.W_OK):
      raise ConfigError(f"workdir {path}: {p} is not writable")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'a.b': leaf}; a list of dicts (optimizer groups) by index, other lists as one value."""
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  if isinstance(tree, (list, tuple)) and tree and all(isinstance(x, Mapping) for x in tree):
    out = {}
    for i, v in enumerate(tree):
      out.update(_flatten(v, f"{prefix}{i}."))
    return out
  return {prefix[:-1]: tree}


def normalised(config: Mapping) -> dict:
  """The config as ``config.json`` holds it (tuples as lists, other values as text)."""
  return json.loads(json.dumps(config, default=str))


def _matches(key: str, patterns) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def classify(key: str, old: Any, new: Any) -> str:
  """'free', 'safe' or 'contract' for a change of ``key`` from ``old`` to ``new`` on resume."""
  if _matches(key, FREE_ON_RESUME):
    return "free"
  if _matches(key, SAFE_ON_RESUME):
    same = _SAME_SHAPE.get(key.rsplit(".", 1)[-1])
    return "safe" if same is None or same(old, new) else "contract"
  return "contract"


class _Absent:
  def __repr__(self) -> str:
    return "absent"


_ABSENT = _Absent()


def config_changes(saved: Mapping, new: Mapping) -> dict[str, tuple[Any, Any, str]]:
  """{key: (saved value, new value, class)} for every key whose value differs. A key that the saved
  config lacks (the schema grew since) counts only when its new value is not the schema's
  default."""
  old, cur = _flatten(normalised(saved)), _flatten(normalised(new))
  defaults = _flatten(normalised(base_config().to_dict()))
  out = {}
  for key in sorted(set(old) | set(cur)):
    a, b = old.get(key, _ABSENT), cur.get(key, _ABSENT)
    if a == b or (a is _ABSENT and key in defaults and defaults[key] == b):
      continue
    out[key] = (a, b, classify(key, a, b))
  return out


def jsonable(changes: Mapping[str, tuple]) -> dict[str, list]:
  """{key: [saved, new]} for run.json and metrics.jsonl (an absent value as None)."""
  return {
    k: [None if a is _ABSENT else a, None if b is _ABSENT else b]
    for k, (a, b, _) in changes.items()
  }


def _describe(changes: Mapping[str, tuple]) -> str:
  return ", ".join(f"{k} ({a!r} → {b!r})" for k, (a, b, _) in changes.items())


def saved_config(workdir: str | os.PathLike) -> dict | None:
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text("utf-8"))
  except (OSError, ValueError) as e:
    raise ConfigError(
      f"workdir {workdir}: {CONFIG_FILE} is unreadable ({e}); move it away to start over"
    ) from None


def _has_checkpoint(workdir: str | os.PathLike) -> bool:
  directory = pathlib.Path(workdir) / "checkpoints"
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_resume(workdir: str | os.PathLike, config: Mapping) -> dict[str, tuple[Any, Any, str]]:
  """The changes of ``config`` against the workdir's ``config.json`` that this run may make (none
  when the workdir is new, or holds no checkpoint to resume: the run then starts over with this
  config); ConfigError, naming the keys, for any it may not."""
  saved = saved_config(workdir)
  if saved is None or not _has_checkpoint(workdir):
    return {}
  changes = config_changes(saved, config)
  contract = {k: v for k, v in changes.items() if v[2] == "contract"}
  safe = {k: v for k, v in changes.items() if v[2] == "safe"}
  if contract:
    hint = (
      ""
      if any(k.startswith("model.") for k in contract)
      else f" (with --config.train.init_from={workdir} to start from its weights)"
    )
    raise ConfigError(
      f"workdir {workdir} holds a run with another config; these keys define the run and "
      f"cannot change on resume: {_describe(contract)}. Use a new workdir{hint}"
    )
  if safe and not get_key(config, "train.allow_changes", False):
    raise ConfigError(
      f"workdir {workdir} holds a run with another config: {_describe(safe)}; rerun with "
      "--config.train.allow_changes=True to continue it with these values"
    )
  return changes
