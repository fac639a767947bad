"""The shared config schema (every knob a trainer reads) and its validation before anything compiles.

Project configs start from :func:`base_config` and change values; a key that is not in the schema is
an error (``ConfigError``, one line), as is an override with a wrong type (ml_collections).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from superpose.nn import config as nn_config
from superpose.nn.sharding import DEFAULT_RULES


class ConfigError(ValueError):
  """A bad config value; the launcher prints its message as one line and exits with status 2."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "superpose.train.lm"   # module with run(config, workdir)
  c.seed = 0
  c.model = model_section("gpt2")  # preset name + every TransformerConfig field
  c.data = ml_collections.ConfigDict({
      "path": "sample:shakespeare.jsonl.gz",  # jsonl(.gz) of {"text"} documents, or .txt
      "tokenizer": "bytes",
      "val_documents": 2,                     # whole documents held out for validation (without val_path)
      "val_path": "",                         # a separate validation file (e.g. a corpus's val split)
      "packing": False,                       # pack whole documents with segment ids (else windows)
  })
  c.optim = ml_collections.ConfigDict({
      "name": "adamw", "lr": 1e-3, "schedule": "warmup_cosine", "warmup_steps": 100,
      "decay_fraction": 0.2, "min_lr_ratio": 0.1, "b1": 0.9, "b2": 0.95, "eps": 1e-8,
      "weight_decay": 0.1, "clip_norm": 1.0,
      "groups": (),   # ({"pattern": regex, "lr": .., "weight_decay": .., "clip_norm": ..}, ...)
      "frozen": (),   # regexes of parameter paths that are not trained
  })
  c.train = ml_collections.ConfigDict({
      "steps": 1000, "batch_size": 8, "seq_len": 256, "accum_steps": 1, "z_loss": 0.0,
      "eval_every": 200, "eval_batches": 8, "log_every": 20,
      "checkpoint_every": 200, "keep_checkpoints": 3, "async_checkpoint": True,
      "profile_steps": (0, 0),    # (first, last) step of a profiler trace; (0, 0) = off
      "init_from": "",            # workdir or checkpoint: load parameters only into a new run
      "progress": True,           # progress bar on process 0
      "log_batch_hash": True,     # record a hash of each batch in metrics.jsonl
      # Multi-process runs agree on a SIGTERM stop step by an all-gather every this many steps (a host
      # sync); one process checks its flag every step at no cost.
      "preemption_check_every": 10,
  })
  c.mesh = ml_collections.ConfigDict({
      "ici": (-1, 1, 1),          # (data, fsdp, tensor) within a slice; one -1 is filled in
      "dcn": (1, 1, 1),           # across slices (multi-slice TPU); product = number of slices
  })
  c.sharding = ml_collections.ConfigDict({"rules": tuple((k, v) for k, v in DEFAULT_RULES)})
  c.distributed = "auto"          # 'auto' | 'true' | 'false': jax.distributed.initialize()
  return c


def model_section(preset: str = "gpt2", **overrides) -> ml_collections.ConfigDict:
  """Every TransformerConfig field, resolved from ``preset``, so that each one can be overridden from
  the command line (``--config.model.num_kv_heads=2``). Optional ints become typed placeholders; the
  attention scale is text ('default', 'one' or a number)."""
  values = {"preset": preset}
  for key, value in nn_config.PRESETS[preset](**overrides).to_dict().items():
    if value is None:
      value = config_dict.placeholder(int)   # num_kv_heads, head_dim
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


def check_schema(config: Mapping, extra_sections: Mapping | None = None) -> None:
  """Unknown keys anywhere in ``config`` (compared with :func:`base_config` plus ``extra_sections``)."""
  ref = base_config().to_dict()
  ref.update(extra_sections or {})
  _check_keys(config, ref, "config.")


def check_mesh(config: Mapping, num_devices: int) -> None:
  ici, dcn = tuple(config["mesh"]["ici"]), tuple(config["mesh"]["dcn"])
  if len(ici) != 3 or len(dcn) != 3:
    raise ConfigError(f"config.mesh: ici and dcn need 3 sizes (data, fsdp, tensor), got {ici} and {dcn}")
  sizes = [a * b for a, b in zip(ici, dcn)]
  if -1 not in ici and -1 not in dcn and math.prod(sizes) != num_devices:
    raise ConfigError(f"config.mesh: data×fsdp×tensor = {'×'.join(map(str, sizes))} = {math.prod(sizes)} "
                      f"devices, but {num_devices} are available")


def check_train(config: Mapping) -> None:
  t = config["train"]
  if t["steps"] < 1:
    raise ConfigError(f"config.train.steps must be ≥ 1, got {t['steps']}")
  if t["batch_size"] % t["accum_steps"]:
    raise ConfigError(f"config.train.batch_size={t['batch_size']} is not divisible by "
                      f"accum_steps={t['accum_steps']}")
  for k in ("eval_every", "log_every", "checkpoint_every"):
    if t[k] < 0:
      raise ConfigError(f"config.train.{k} must be ≥ 0 (0 = off), got {t[k]}")


def to_dict(config: Any) -> dict:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)
