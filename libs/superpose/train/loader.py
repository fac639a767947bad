"""One way to get a trained model back: ``load_model(path)`` for any run of any trainer, or a
Hugging Face GPT-2 directory.

A run's ``config.json`` names its trainer (``config.trainer``); that module's ``make_spec(config)``
(superpose.train.task) builds the model abstractly and the checkpoint's parameters are read onto it
on the first local device. Nothing here names a project: the trainer is imported by the name the run
recorded, as ``launch.train`` does.

    from superpose.train.loader import load_model
    loaded = load_model("workdirs/icl/mod_add_skewed")      # newest readable checkpoint
    logits = loaded.model(tokens).logits_BTV
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from superpose.nn import Transformer, hf_gpt2
from superpose.train import checkpoint as ckpt_lib, config as config_lib
from superpose.train.config import ConfigError

__all__ = ["Loaded", "load_model", "make_spec", "with_defaults"]


@dataclasses.dataclass
class Loaded:
  """A restored model: ``config`` (the run's config.json; ``{"hf": path}`` for an HF directory),
  ``spec`` (its trainer's spec; None for an HF directory), ``graphdef`` + ``params`` (``model``
  merges them) and the checkpoint read."""

  config: dict
  spec: Any
  graphdef: Any
  params: Any
  checkpoint: pathlib.Path

  @functools.cached_property
  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.params)

  @property
  def trainer(self) -> str:
    return self.config.get("trainer", "hf")


def make_spec(config: dict):
  """The spec of the trainer a run recorded (its module's ``make_spec``)."""
  trainer = config.get("trainer")
  module = config_lib.trainer_module(trainer)
  if not hasattr(module, "make_spec"):
    raise ConfigError(
      f"config.trainer={trainer!r} has no make_spec(config) (see superpose.train.task)"
    )
  return module.make_spec(config)


def with_defaults(recorded: dict) -> dict:
  """A recorded config with the keys it lacks (a run written before they existed, a hand-written
  config.json) at their defaults; the model section as recorded."""
  out = config_lib.base_config(recorded.get("trainer")).to_dict()
  for key, value in recorded.items():
    section = isinstance(value, dict) and isinstance(out.get(key), dict) and key != "model"
    out[key] = {**out[key], **value} if section else value
  return out


def load_model(path: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> Loaded:
  """The model of ``path``: a workdir of any trainer (parameters of ``checkpoint`` when given — a
  checkpoint directory or one step's directory — else of the newest readable step) or a Hugging Face
  GPT-2 directory."""
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist")
  if hf_gpt2.is_hf_dir(path):
    model_cfg, params = hf_gpt2.load_hf_gpt2(path)
    graphdef = nnx.split(
      nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))), nnx.Param, ...
    )[0]
    return Loaded({"hf": str(path)}, None, graphdef, jax.tree.map(jnp.asarray, params), path)
  config = with_defaults(ckpt_lib.run_config(path))
  spec = make_spec(config)
  source = pathlib.Path(checkpoint) if checkpoint is not None else ckpt_lib.checkpoint_dir(path)
  graphdef, params = ckpt_lib.restore_module(spec.make_model, source)
  return Loaded(config, spec, graphdef, params, source)
