"""What the analysis commands (calibrate, capacity, task_vectors, task_mass) share: an expected
failure is one line on stderr and exit status 2; the results are written as ``<stem>.json`` and
``<stem>.md`` (also printed)."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Callable

from superpose.train.config import ConfigError

ERRORS = (FileNotFoundError, ValueError, ConfigError)


def run(
  out: str | pathlib.Path,
  stem: str,
  analyse: Callable[[pathlib.Path], Any],
  markdown: Callable[[Any], str],
  after: Callable[[Any, pathlib.Path], None] | None = None,
) -> int:
  """``analyse(out)`` → results (plots go to ``out`` as it goes); ``after(results, out)`` for a last
  plot."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  try:
    results = analyse(out)
  except ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if after is not None:
    after(results, out)
  (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
  text = markdown(results)
  (out / f"{stem}.md").write_text(text)
  print(text)
  return 0
