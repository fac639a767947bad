"""Train any project from a config: ``python -m launch.train --config configs/<x>.py:<variant>
--workdir DIR``.

Overrides: ``--config.train.steps=100 --config.model.d_model=256``. ``--print_config`` prints the
resolved config, one ``key = value  # what it is`` line per key, and exits (no workdir needed).
Rerunning with the same workdir resumes from its newest readable checkpoint, if the config still
describes the run recorded there (``config.json``; lr and other state-preserving changes need
``--config.train.allow_changes=True``). A bad config fails before compiling with one line; every
expected failure ends with one line and its exit status (launch/common.py, README.md); ``--verbose``
adds tracebacks and orbax's own logging.
"""

from __future__ import annotations

import importlib

from absl import app, flags
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, `path.py[:variant]`.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, logs).")
_PRINT = flags.DEFINE_bool(
  "print_config", False, "Print the resolved config with each key's doc and exit."
)
_VERBOSE = flags.DEFINE_bool(
  "verbose", False, "Tracebacks with the one-line errors, and orbax's INFO logging."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if _PRINT.value:
    from superpose.train import config as config_lib

    with common.one_line_errors(_VERBOSE.value):
      config_lib.check(config)
      print(config_lib.describe(config))
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (or --print_config)")
  if _VERBOSE.value:
    from superpose.train import checkpoint

    checkpoint.set_orbax_verbose(True)
  with common.one_line_errors(_VERBOSE.value):
    common.setup(config, _WORKDIR.value)
    trainer = importlib.import_module(config.trainer)
    trainer.run(config, _WORKDIR.value)


if __name__ == "__main__":
  common.run_absl(main)
