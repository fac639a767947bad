"""What every launcher does first: logging, compilation cache, jax.distributed, config checks."""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import sys

from absl import app, flags


def setup(config) -> None:
  """Call before the first JAX computation."""
  import jax
  from superpose.train import config as config_lib
  from superpose.train.mesh import maybe_initialize_distributed

  config_lib.check_schema(config.to_dict(), getattr(config, "extra_sections", None))
  config_lib.check_train(config)
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "superpose" / "jax"))
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  dist = str(config.distributed).lower()
  maybe_initialize_distributed({"auto": "auto", "true": True, "false": False}.get(dist, "auto"))
  config_lib.check_mesh(config, jax.device_count())


@contextlib.contextmanager
def one_line_errors():
  """Config and input errors end the program with one line and status 2, not a traceback."""
  from superpose.train.config import ConfigError
  from superpose.train.mesh import MeshError
  try:
    yield
  except (ConfigError, MeshError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
  """absl flag parsing where a bad ``--config.*`` override is one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
  except (AttributeError, KeyError) as e:  # ml_collections: a key that the config does not have
    text = str(e)
    key = re.search(r"'([\w.]+)", text)
    hint = re.search(r"Did you mean [^?]*\?", text)
    print(f"error: --config override: unknown key {key.group(1) if key else text!r}"
          + (f". {hint.group(0)}" if hint else ""), file=sys.stderr)
  except (TypeError, ValueError) as e:
    print(f"error: --config override: {' '.join(str(e).split())}", file=sys.stderr)
  sys.exit(2)


def run_absl(main) -> None:
  logging.getLogger().setLevel(logging.INFO)
  for noisy in ("absl", "jax._src", "orbax", "etils", "grain", "tensorstore"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  app.run(main, flags_parser=_parse_flags)
