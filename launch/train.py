"""Train any project from a config: ``python -m launch.train --config configs/<x>.py:<variant> --workdir DIR``.

Overrides: ``--config.train.steps=100 --config.model.d_model=256``. Rerunning with the same workdir
resumes from its newest readable checkpoint. A bad config fails before compiling with one line.
"""
from __future__ import annotations

import importlib
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, `path.py[:variant]`.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, logs).", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  with common.one_line_errors():
    common.setup(config)
    trainer = importlib.import_module(config.trainer)
    trainer.run(config, _WORKDIR.value)


if __name__ == "__main__":
  common.run_absl(main)
