"""Multi-process runs: notice a peer process that died, and stop with one line instead of waiting.

When one process of a ``jax.distributed`` job dies (kill -9, out of memory, a lost host), the others
wait in their next collective until the coordination service's heartbeat timeout (100 s by default),
and then jax's runtime aborts them with a C++ stack trace. A :class:`Watchdog` thread in every
process instead bumps a counter in the service's key-value store every couple of seconds and reads
everyone else's; a peer whose counter has not moved for ``timeout_s`` is taken as dead and this
process exits with one line on stderr — which process, and what is on disk to resume from — and its
own status (``launch.common.EXIT_PEER_LOST``). A process that loses the coordinator itself
(process 0) is aborted by jax's runtime at once, before any thread of ours can speak: its own
message says so.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable

import jax

log = logging.getLogger(__name__)

_PREFIX = "superpose/alive/"
_describe: list[Callable[[], str] | None] = [None]
_current: list["Watchdog | None"] = [None]


def describe_disk_with(fn: Callable[[], str] | None) -> None:
  """What to add to the message when a peer is lost (the loop names the checkpoints on disk)."""
  _describe[0] = fn


class Watchdog:
  """``client``: the jax.distributed client (its key-value store); ``index``/``count``: this process
  and the number of processes (default: jax's); ``exit``: how to end the process (tests replace
  it)."""

  def __init__(
    self,
    timeout_s: float,
    exit_code: int,
    client,
    index: int | None = None,
    count: int | None = None,
    exit: Callable[[int], None] = os._exit,
  ):
    self.timeout_s = float(timeout_s)
    self.exit_code = exit_code
    self.index = jax.process_index() if index is None else index
    self.count = jax.process_count() if count is None else count
    self._client = client
    self._exit = exit
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="superpose-peer-watchdog", daemon=True)

  def start(self) -> "Watchdog":
    self._thread.start()
    return self

  def stop(self) -> None:
    self._stop.set()

  @property
  def running(self) -> bool:
    return self._thread.is_alive()

  @property
  def interval_s(self) -> float:
    return max(0.2, min(2.0, self.timeout_s / 5))

  def _run(self) -> None:
    interval = self.interval_s
    seen = {p: (None, time.monotonic()) for p in range(self.count) if p != self.index}
    beat = 0
    while not self._stop.wait(interval):
      beat += 1
      try:
        self._client.key_value_set(f"{_PREFIX}{self.index}", str(beat), allow_overwrite=True)
        values = dict(self._client.key_value_dir_get(_PREFIX))
      except Exception as e:  # noqa: BLE001 - the coordinator is gone (jax's runtime usually aborts first)
        if not self._stop.is_set():
          self._lost(
            f"the coordinator (process 0) cannot be reached ({' '.join(str(e).split())[:200]})"
          )
        return
      now = time.monotonic()
      for p, (value, since) in seen.items():
        current = values.get(f"{_PREFIX}{p}")
        if current != value:
          seen[p] = (current, now)
        elif now - since > self.timeout_s and not self._stop.is_set():
          self._lost(
            f"process {p} of {self.count} has shown no sign of life for {now - since:.0f} s "
            "(dead or hung)"
          )
          return

  def _lost(self, what: str) -> None:
    disk = ""
    if _describe[0] is not None:
      try:
        disk = "; " + _describe[0]()
      except Exception:  # noqa: BLE001 - the message must go out whatever happens
        pass
    sys.stdout.flush()
    print(
      f"error: process {self.index}: {what}, so this process stops{disk}",
      file=sys.stderr,
      flush=True,
    )
    self._exit(self.exit_code)


def start_watchdog(timeout_s: float, exit_code: int) -> Watchdog | None:
  """Start the watchdog of this process (after ``jax.distributed.initialize``); None when there is
  no multi-process runtime."""
  if jax.process_count() == 1:
    return None
  try:
    from jax._src import distributed  # the runtime's client: no public accessor

    client = distributed.global_state.client
  except (ImportError, AttributeError):
    client = None
  if client is None:
    log.warning(
      "no jax.distributed client found; a dead peer will be noticed by jax's heartbeat only"
    )
    return None
  stop_watchdog()
  _current[0] = Watchdog(timeout_s, exit_code, client).start()
  return _current[0]


def is_collective_failure(error: BaseException) -> bool:
  """A runtime error of a multi-process job (e.g. gloo's "Connection reset by peer"): a peer may be
  gone."""
  return jax.process_count() > 1 and type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError")


def await_verdict() -> None:
  """After a collective failed: give the watchdog the time to tell a dead peer (it then ends this
  process with its line and status); returns when every peer kept showing signs of life (the error
  is real)."""
  dog = _current[0]
  if dog is None or not dog.running:
    return
  log.warning(
    "a collective failed; waiting up to %.0f s to see whether a peer process is gone", dog.timeout_s
  )
  deadline = time.monotonic() + dog.timeout_s + 3 * dog.interval_s
  while time.monotonic() < deadline and dog.running:
    time.sleep(0.1)


def stop_watchdog() -> None:
  """Stop watching (the end of training: processes may now finish at different times)."""
  if _current[0] is not None:
    _current[0].stop()
    _current[0] = None
