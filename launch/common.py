"""What every launcher does first: logging, compilation cache, jax.distributed, config checks; and
how a run ends: one line and a documented exit status for every failure that is not a bug.

Exit statuses (README.md, "Exit statuses", shows the same table):

  0  finished, or stopped on SIGTERM after saving a checkpoint
  1  an unexpected error (a bug): Python's traceback
  2  refused before compiling: a bad config value or override, a workdir that is a file or not
     writable, a resume whose config differs from the workdir's, a missing data file, a checkpoint
     of another model
  3  a non-finite loss or gradient: training stopped at that step (the line names the newest
     checkpoint)
  4  no readable checkpoint: every saved step is unreadable or corrupt (nothing on disk was changed)
  5  a peer process of a multi-process run died or hung (the line names the newest checkpoint)
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import sys
import traceback

from absl import app, flags

EXIT_CONFIG, EXIT_NON_FINITE, EXIT_NO_CHECKPOINT, EXIT_PEER_LOST = 2, 3, 4, 5


def setup(config, workdir: str | None = None) -> None:
  """Call before the first JAX computation: every check that needs no compilation, then
  jax.distributed."""
  import jax
  from superpose.train import config as config_lib, peers, workdir as workdir_lib
  from superpose.train.mesh import maybe_initialize_distributed

  config_lib.check(
    config
  )  # the one validation of a config: no unknown key, every value in its domain
  if workdir is not None:
    workdir_lib.check_writable(workdir)
  cache = os.environ.get(
    "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "superpose" / "jax")
  )
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  dist = str(config.distributed).lower()
  if maybe_initialize_distributed({"auto": "auto", "true": True, "false": False}.get(dist, "auto")):
    peers.start_watchdog(config.peer_timeout_s, EXIT_PEER_LOST)
  config_lib.check_mesh(config, jax.device_count())
  config_lib.check_batch(config, jax.device_count(), jax.process_count())


def _exit_status(e: BaseException) -> int | None:
  from superpose.train.checkpoint import CheckpointError, CheckpointMismatch
  from superpose.train.config import ConfigError
  from superpose.train.loop import NonFiniteLoss
  from superpose.train.mesh import MeshError

  if isinstance(e, (ConfigError, MeshError, FileNotFoundError, CheckpointMismatch)):
    return EXIT_CONFIG
  if isinstance(e, NonFiniteLoss):
    return EXIT_NON_FINITE
  if isinstance(e, CheckpointError):
    return EXIT_NO_CHECKPOINT
  return None


@contextlib.contextmanager
def one_line_errors(verbose: bool = False):
  """Expected failures (see the module docstring) end the program with one line on stderr and their
  exit status; ``verbose`` prints the traceback before that line. Anything else is a bug:
  traceback."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 - sorted by _exit_status, re-raised when unexpected
    status = _exit_status(e)
    if status is None:
      raise
    if verbose:
      traceback.print_exc()
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(status)


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
    print(
      f"error: --config override: unknown key {key.group(1) if key else text!r}"
      + (f". {hint.group(0)}" if hint else ""),
      file=sys.stderr,
    )
  except (TypeError, ValueError) as e:
    print(f"error: --config override: {' '.join(str(e).split())}", file=sys.stderr)
  sys.exit(EXIT_CONFIG)


def run_absl(main) -> None:
  logging.getLogger().setLevel(logging.INFO)
  for noisy in ("absl", "jax._src", "orbax", "etils", "grain", "tensorstore"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  app.run(main, flags_parser=_parse_flags)
