"""The shared config schema (every knob a trainer reads) and its validation before anything
compiles.

Project configs start from :func:`base_config` and change values; a key that is not in the schema is
an error (``ConfigError``, one line), as is an override with a wrong type (ml_collections), a value
outside its key's domain (:data:`DOMAINS`, checked by :func:`check_train`) and a batch that the
data-parallel devices do not divide (:func:`check_batch`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

import ml_collections
from ml_collections import config_dict

from superpose.nn import config as nn_config
from superpose.nn.sharding import DEFAULT_RULES
from superpose.train.optim import SCHEDULES

MESH_AXES = ("data", "fsdp", "tensor")


class ConfigError(ValueError):
  """A bad config value; the launcher prints its message as one line and exits with status 2."""


# A section is declared once, as {key: (default, one-line doc)}: `section` makes its ConfigDict,
# `describe` prints a resolved config with the docs. A trainer declares its own sections as
# `CONFIG_SECTIONS` ({name: declaration}); `base_config(trainer)` adds them and `check_schema` reads
# them from the trainer named in the config — no config or launcher has to know a project's
# sections.
Declaration = Mapping[str, tuple[Any, str]]

TOP: Declaration = {
  "trainer": (
    "superpose.train.lm",
    "module with make_spec(cfg), make_task(cfg) and run(config, workdir)",
  ),
  "seed": (0, "seed of the parameters and of the data order"),
  "distributed": ("auto", "'auto' | 'true' | 'false': jax.distributed.initialize()"),
  "peer_timeout_s": (
    30.0,
    "multi-process: a peer silent this long ends the run with one line (exit 5); "
    "below jax.distributed's 100 s heartbeat",
  ),
}
DATA: Declaration = {
  "path": ("sample:shakespeare.jsonl.gz", "jsonl(.gz) of {'text'} documents, or .txt"),
  "tokenizer": ("bytes", "bytes | gpt2 | symbols | a registered name (superpose.data.tokenizers)"),
  "val_documents": (2, "whole documents held out for validation (without val_path)"),
  "val_path": ("", "a separate validation file (e.g. a corpus's val split)"),
  "packing": (
    False,
    "pack whole documents into rows with segment ids (else windows of one stream)",
  ),
}
OPTIM: Declaration = {
  "name": ("adamw", "the optimizer (adamw only)"),
  "lr": (1e-3, "peak learning rate"),
  "schedule": ("warmup_cosine", "learning-rate schedule: " + " | ".join(SCHEDULES)),
  "warmup_steps": (100, "linear warmup from 0"),
  "decay_fraction": (0.2, "wsd: the last fraction of the steps decays linearly"),
  "min_lr_ratio": (0.1, "final learning rate / lr"),
  "b1": (0.9, "Adam β1"),
  "b2": (0.95, "Adam β2"),
  "eps": (1e-8, "Adam ε"),
  "weight_decay": (0.1, "decoupled weight decay (AdamW)"),
  "clip_norm": (1.0, "global gradient-norm clipping (0 = off)"),
  "groups": ((), "({pattern: regex, lr, weight_decay, clip_norm}, ...): per-group overrides"),
  "frozen": ((), "regexes of parameter paths that are not trained"),
  "reset_steps": ((), "steps (1-based) before whose update the optimizer state is re-initialised"),
}
TRAIN: Declaration = {
  "steps": (1000, "optimizer steps"),
  "batch_size": (8, "global rows per step (over all processes and devices)"),
  "seq_len": (256, "tokens per row (language-modelling trainers)"),
  "accum_steps": (1, "microbatches per step (gradient accumulation)"),
  "z_loss": (0.0, "weight of the log-partition (z) loss"),
  "eval_every": (200, "evaluate every N steps (0 = never; always at the end)"),
  "eval_batches": (8, "validation batches of an evaluation"),
  "log_every": (20, "log line every N steps when there is no progress bar"),
  "checkpoint_every": (200, "checkpoint every N steps (0 = only at the end and on SIGTERM)"),
  "keep_checkpoints": (3, "newest checkpoints kept"),
  "async_checkpoint": (True, "write checkpoints in the background"),
  "profile_steps": ((0, 0), "(first, last) step of a profiler trace; (0, 0) = off"),
  "init_from": ("", "workdir or checkpoint: load parameters only into a new run"),
  "progress": (True, "progress bar on process 0"),
  "log_batch_hash": (True, "record a hash of each batch in metrics.jsonl"),
  "preemption_check_every": (
    10,
    "multi-process runs agree on a SIGTERM stop step by an all-gather every N steps",
  ),
  "allow_changes": (
    False,
    "a resume may change the keys of superpose.train.workdir.SAFE_ON_RESUME (lr, ...)",
  ),
}
MESH: Declaration = {
  "ici": ((-1, 1, 1), "(data, fsdp, tensor) within a slice; one -1 is filled in"),
  "dcn": ((1, 1, 1), "(data, fsdp, tensor) across slices (multi-slice TPU); product = slices"),
}
SHARDING: Declaration = {
  "rules": (
    tuple((k, v) for k, v in DEFAULT_RULES),
    "(logical axis, mesh axes) pairs (superpose.nn.sharding)",
  )
}
SECTIONS: dict[str, Declaration] = {
  "data": DATA,
  "optim": OPTIM,
  "train": TRAIN,
  "mesh": MESH,
  "sharding": SHARDING,
}


def section(declaration: Declaration, **overrides) -> ml_collections.ConfigDict:
  """The ConfigDict of a declared section, ``overrides`` applied (an unknown key is a
  ConfigError)."""
  unknown = set(overrides) - set(declaration)
  if unknown:
    raise ConfigError(f"unknown keys {sorted(unknown)} (known: {', '.join(declaration)})")
  return ml_collections.ConfigDict({k: overrides.get(k, v) for k, (v, _) in declaration.items()})


def variant(arg: str | None, variants, default: str, where: str) -> str:
  """A config file's variant: ``arg`` (empty: ``default``) when it is one of ``variants``, else a
  ValueError that names them (``where``: the config file)."""
  name = arg or default
  if name not in variants:
    raise ValueError(f"{where}: unknown variant {name!r} (known: {', '.join(variants)})")
  return name


def trainer_module(trainer: str):
  """The module ``config.trainer`` names (ConfigError when it cannot be imported)."""
  import importlib

  try:
    return importlib.import_module(trainer)
  except (ImportError, TypeError) as e:
    raise ConfigError(f"config.trainer={trainer!r} cannot be imported: {e}") from None


def trainer_sections(trainer: str) -> dict[str, Declaration]:
  """The sections ``trainer`` declares (its module's ``CONFIG_SECTIONS``; none for a plain LM)."""
  return dict(getattr(trainer_module(trainer), "CONFIG_SECTIONS", {}))


def base_config(trainer: str | None = None) -> ml_collections.ConfigDict:
  """Every shared key with its default; with ``trainer``, that trainer's sections too (and
  config.trainer)."""
  c = ml_collections.ConfigDict({k: v for k, (v, _) in TOP.items()})
  c.model = model_section("gpt2")  # preset name + every TransformerConfig field
  for name, declaration in SECTIONS.items():
    c[name] = section(declaration)
  if trainer is not None:
    c.trainer = trainer
    for name, declaration in trainer_sections(trainer).items():
      c[name] = section(declaration)
  return c


def docs(trainer: str | None = None) -> dict[str, str]:
  """``{'train.steps': 'optimizer steps', ...}``: the one-line doc of every key."""
  out = {k: d for k, (_, d) in TOP.items()}
  out.update({f"model.{k}": d for k, d in nn_config.FIELD_DOCS.items()})
  out["model.preset"] = "the preset the section was resolved from: " + " | ".join(nn_config.PRESETS)
  sections = {**SECTIONS, **(trainer_sections(trainer) if trainer else {})}
  for name, declaration in sections.items():
    out.update({f"{name}.{k}": d for k, (_, d) in declaration.items()})
  return out


def describe(config: Any) -> str:
  """The resolved config, one ``key = value  # doc`` line per key, sections in order."""
  cfg = to_dict(config)
  notes = docs(cfg.get("trainer"))
  lines = []

  def walk(node: Mapping, prefix: str) -> None:
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, Mapping) and v and key != "optim.groups":
        lines.append(f"{key}:")
        walk(v, key + ".")
      else:
        text = f"{key} = {v!r}"
        lines.append(f"{text:<48}  # {notes[key]}" if key in notes else text)

  walk(cfg, "")
  return "\n".join(lines)


def model_section(preset: str = "gpt2", **overrides) -> ml_collections.ConfigDict:
  """Every TransformerConfig field, resolved from ``preset``, so that each one can be overridden
  from the command line (``--config.model.num_kv_heads=2``). Optional ints become typed
  placeholders; the attention scale is text ('default', 'one' or a number)."""
  values = {"preset": preset}
  for key, value in nn_config.PRESETS[preset](**overrides).to_dict().items():
    if value is None:
      value = config_dict.placeholder(int)  # num_kv_heads, head_dim
    elif key == "attn_scale":
      value = str(value)
    values[key] = value
  return ml_collections.ConfigDict(values)


def _check_keys(cfg: Mapping, ref: Mapping, where: str) -> None:
  for k in cfg:
    if k not in ref:
      raise ConfigError(f"{where}{k}: unknown config key (known: {', '.join(sorted(ref))})")
    if isinstance(ref[k], Mapping) and k not in ("model",):
      if not isinstance(cfg[k], Mapping):
        raise ConfigError(f"{where}{k}: expected a section, got {cfg[k]!r}")
      _check_keys(cfg[k], ref[k], f"{where}{k}.")


def check_schema(config: Mapping) -> None:
  """Unknown keys anywhere in ``config``, compared with :func:`base_config` of the trainer it
  names."""
  _check_keys(config, base_config(config.get("trainer")).to_dict(), "config.")


# --- value domains


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int_at_least(lo: int) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: _is_int(v) and v >= lo), f"an integer ≥ {lo}"


def _number(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
  def ok(v):
    return _is_num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

  left, right = "(" if lo_open else "[", ")" if hi_open or hi == math.inf else "]"
  text = (
    (f"a number > {lo:g}" if lo_open else f"a number ≥ {lo:g}")
    if hi == math.inf
    else f"a number in {left}{lo:g}, {hi:g}{right}"
  )
  return ok, text


def _regex(v) -> bool:
  try:
    re.compile(v)
  except (re.error, TypeError):
    return False
  return True


def _mesh_sizes(v) -> bool:
  sizes = tuple(v) if isinstance(v, (tuple, list)) else ()
  return (
    len(sizes) == 3
    and all(_is_int(s) and (s >= 1 or s == -1) for s in sizes)
    and sizes.count(-1) <= 1
  )


def _group(g) -> bool:
  if (
    not isinstance(g, Mapping) or not isinstance(g.get("pattern"), str) or not _regex(g["pattern"])
  ):
    return False
  if set(g) - {"pattern", "lr", "weight_decay", "clip_norm"}:
    return False
  return (
    (g.get("lr") is None or (_is_num(g["lr"]) and g["lr"] > 0))
    and (g.get("weight_decay") is None or (_is_num(g["weight_decay"]) and g["weight_decay"] >= 0))
    and (g.get("clip_norm") is None or (_is_num(g["clip_norm"]) and g["clip_norm"] >= 0))
  )


def _rule(r) -> bool:
  if not isinstance(r, (tuple, list)) or len(r) != 2 or not isinstance(r[0], str):
    return False
  axes = r[1]
  if axes is None:
    return True
  axes = (axes,) if isinstance(axes, str) else axes
  return isinstance(axes, (tuple, list)) and all(a in MESH_AXES for a in axes)


# Every key of the shared schema whose values are restricted, with what it must be. The model
# section is checked by superpose.nn's TransformerConfig (every field with a domain); tokenizer
# names by the trainer (projects register their own).
DOMAINS: dict[str, tuple[Callable[[Any], bool], str]] = {
  "seed": _int_at_least(0),
  "distributed": (
    lambda v: str(v).lower() in ("auto", "true", "false"),
    "'auto', 'true' or 'false'",
  ),
  "peer_timeout_s": _number(1, 60),
  "data.val_documents": _int_at_least(0),
  "optim.name": (lambda v: v == "adamw", "'adamw' (the only optimizer)"),
  "optim.lr": _number(0, lo_open=True),
  "optim.schedule": (lambda v: v in SCHEDULES, "one of " + ", ".join(SCHEDULES)),
  "optim.warmup_steps": _int_at_least(0),
  "optim.decay_fraction": _number(0, 1),
  "optim.min_lr_ratio": _number(0, 1),
  "optim.b1": _number(0, 1, hi_open=True),
  "optim.b2": _number(0, 1, hi_open=True),
  "optim.eps": _number(0, lo_open=True),
  "optim.weight_decay": _number(0),
  "optim.clip_norm": _number(0),
  "optim.groups": (
    lambda v: isinstance(v, (tuple, list)) and all(_group(g) for g in v),
    "a list of {pattern: regex, lr > 0, weight_decay ≥ 0, clip_norm ≥ 0}",
  ),
  "optim.frozen": (
    lambda v: isinstance(v, (tuple, list)) and all(_regex(p) for p in v),
    "a list of regular expressions",
  ),
  "optim.reset_steps": (
    lambda v: isinstance(v, (tuple, list)) and all(_is_int(s) and s >= 1 for s in v),
    "a list of steps ≥ 1",
  ),
  "train.steps": _int_at_least(1),
  "train.batch_size": _int_at_least(1),
  "train.seq_len": _int_at_least(1),
  "train.accum_steps": _int_at_least(1),
  "train.z_loss": _number(0),
  "train.eval_every": _int_at_least(0),
  "train.eval_batches": _int_at_least(0),
  "train.log_every": _int_at_least(0),
  "train.checkpoint_every": _int_at_least(0),
  "train.keep_checkpoints": _int_at_least(1),
  "train.profile_steps": (
    lambda v: (
      isinstance(v, (tuple, list))
      and len(v) == 2
      and all(_is_int(s) for s in v)
      and 0 <= v[0] <= v[1]
    ),
    "(first, last) with 0 ≤ first ≤ last ((0, 0) = off)",
  ),
  "train.preemption_check_every": _int_at_least(1),
  "mesh.ici": (_mesh_sizes, "3 sizes (data, fsdp, tensor), each ≥ 1 or one -1"),
  "mesh.dcn": (_mesh_sizes, "3 sizes (data, fsdp, tensor), each ≥ 1 or one -1"),
  "sharding.rules": (
    lambda v: isinstance(v, (tuple, list)) and all(_rule(r) for r in v),
    "(logical name, mesh axis | (mesh axes) | None) pairs over " + ", ".join(MESH_AXES),
  ),
}

_MISSING = object()


def get_key(config: Mapping, key: str, default: Any = _MISSING) -> Any:
  """``config['a']['b']`` for ``key='a.b'``."""
  value: Any = config
  for part in key.split("."):
    if not isinstance(value, Mapping) or part not in value:
      if default is _MISSING:
        raise KeyError(key)
      return default
    value = value[part]
  return value


def check_values(config: Mapping) -> None:
  """Every value of :data:`DOMAINS` present in ``config`` inside its domain, else ConfigError."""
  for key, (ok, what) in DOMAINS.items():
    value = get_key(config, key, _MISSING)
    if value is not _MISSING and not ok(value):
      raise ConfigError(f"config.{key}={value!r}: must be {what}")


def _check_model(config: Mapping) -> None:
  model = config.get("model")
  # Only a plain model_section (project sections of other shapes are built by their trainer).
  if isinstance(model, Mapping) and set(model) <= {"preset", *nn_config.FIELDS}:
    try:
      nn_config.from_dict(model)
    except (TypeError, ValueError) as e:
      raise ConfigError(" ".join(str(e).split())) from None


def check_mesh(config: Mapping, num_devices: int) -> None:
  ici, dcn = tuple(config["mesh"]["ici"]), tuple(config["mesh"]["dcn"])
  if len(ici) != 3 or len(dcn) != 3:
    raise ConfigError(
      f"config.mesh: ici and dcn need 3 sizes (data, fsdp, tensor), got {ici} and {dcn}"
    )
  sizes = [a * b for a, b in zip(ici, dcn)]
  if -1 not in ici and -1 not in dcn and math.prod(sizes) != num_devices:
    raise ConfigError(
      f"config.mesh: data×fsdp×tensor = {'×'.join(map(str, sizes))} = {math.prod(sizes)} "
      f"devices, but {num_devices} are available"
    )


def mesh_sizes(config: Mapping, num_devices: int) -> dict[str, int]:
  """The size of each mesh axis (ici × dcn, the -1s filled in) for ``num_devices``."""
  from superpose.train.mesh import fill_axes

  ici, dcn = tuple(config["mesh"]["ici"]), tuple(config["mesh"]["dcn"])
  if -1 not in dcn:
    slices = math.prod(dcn)
  else:  # as many slices as the known ici sizes leave
    slices = num_devices // math.prod(ici) if -1 not in ici else 1
  dcn = fill_axes(dcn, slices, "config.mesh.dcn")
  ici = fill_axes(ici, num_devices // math.prod(dcn), "config.mesh.ici")
  return {a: i * d for a, i, d in zip(MESH_AXES, ici, dcn)}


def check_batch(config: Mapping, num_devices: int, num_processes: int = 1) -> None:
  """The global batch splits evenly over the processes and the mesh axes that the 'batch' rule
  names (else each device would compute a replicated copy of the whole batch)."""
  config = to_dict(config)
  batch = config["train"]["batch_size"]
  if batch % num_processes:
    raise ConfigError(
      f"config.train.batch_size={batch} is not divisible by the {num_processes} processes"
    )
  sizes = mesh_sizes(config, num_devices)
  axes = next((a for k, a in config["sharding"]["rules"] if k == "batch"), None)
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  parallel = math.prod(sizes[a] for a in axes if a in sizes)
  if batch % parallel:
    raise ConfigError(
      f"config.train.batch_size={batch} is not divisible by the data-parallel size {parallel} "
      f"({' × '.join(f'{a} {sizes[a]}' for a in axes if sizes.get(a, 1) > 1)}): pick a multiple of "
      f"{parallel} or change config.mesh"
    )


def check(config: Any) -> None:
  """What the launcher checks before anything compiles (launch.common.setup; call it when you run a
  trainer from Python): no unknown key (:func:`check_schema`), every value in its domain
  (:func:`check_train`)."""
  cfg = to_dict(config)
  check_schema(cfg)
  check_train(cfg)


def check_train(config: Mapping) -> None:
  """Every value in its domain (:data:`DOMAINS`, the model section) and the keys that depend on each
  other."""
  config = to_dict(config)
  check_values(config)
  t = config["train"]
  if t["batch_size"] % t["accum_steps"]:
    raise ConfigError(
      f"config.train.batch_size={t['batch_size']} is not divisible by "
      f"accum_steps={t['accum_steps']}"
    )
  _check_model(config)


def to_dict(config: Any) -> dict:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)
