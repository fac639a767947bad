"""The multi-process watchdog against an in-memory key-value store (the real one:
test_multiprocess.py)."""

import threading
import time

from superpose.train import peers


class Store:
  """What the watchdog uses of jax.distributed's client."""

  def __init__(self):
    self.values, self.lock, self.broken = {}, threading.Lock(), False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.broken:
      raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
    with self.lock:
      self.values[key] = value

  def key_value_dir_get(self, prefix):
    with self.lock:
      return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def _dog(store, index, exits, timeout=1.0):
  return peers.Watchdog(timeout, 5, store, index=index, count=2, exit=exits.append).start()


def _wait(cond, timeout):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and not cond():
    time.sleep(0.05)


def test_a_peer_that_stops_beating_ends_this_process_with_one_line(capsys):
  store, exits0, exits1 = Store(), [], []
  a, b = _dog(store, 0, exits0), _dog(store, 1, exits1)
  peers.describe_disk_with(lambda: "the newest checkpoint on disk is step 20 (/w/checkpoints)")
  try:
    time.sleep(2.0)  # both alive for twice the timeout: nobody is taken for dead
    assert exits0 == exits1 == [] and a.running and b.running
    b.stop()  # process 1 dies
    _wait(lambda: exits0, 5.0)
  finally:
    peers.describe_disk_with(None)
    a.stop()
  assert exits0 == [5] and not a.running
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(
    "error: process 0: process 1 of 2 has shown no sign of life for "
  )
  assert err[0].endswith(
    "(dead or hung), so this process stops; the newest checkpoint on disk is step 20 "
    "(/w/checkpoints)"
  )


def test_a_lost_coordinator_ends_this_process(capsys):
  store, exits = Store(), []
  dog = _dog(store, 1, exits, timeout=5.0)
  store.broken = True
  _wait(lambda: exits, 5.0)
  dog.stop()
  assert exits == [5]
  assert (
    "error: process 1: the coordinator (process 0) cannot be reached (UNAVAILABLE"
    in capsys.readouterr().err
  )


def test_a_stopped_watchdog_says_nothing(capsys):
  store, exits = Store(), []
  a, b = _dog(store, 0, exits), _dog(store, 1, [])
  a.stop()  # the end of training: processes finish at different times
  b.stop()
  time.sleep(1.5)
  assert exits == [] and capsys.readouterr().err == ""
