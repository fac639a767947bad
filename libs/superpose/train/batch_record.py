"""Per-process record of which global batch rows each process fills (a test and debugging aid)."""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Mapping

import numpy as np
from jax.sharding import NamedSharding

# With this variable set, every process appends to WORKDIR/debug/batches_process_<i>.jsonl, per
# step, the rows of the global batch that its host data fills and a hash of each row: what the tests
# use to show that each process reads only its own slice. Unset, it costs one check per step.
RECORD_BATCHES_ENV = "SUPERPOSE_RECORD_BATCHES"


class BatchRecorder:
  def __init__(self, workdir: pathlib.Path, pidx: int, pcount: int):
    self.pidx, self.pcount = pidx, pcount
    path = workdir / "debug" / f"batches_process_{pidx}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(path, "a", buffering=1)

  def record(
    self, step: int, host: dict[str, np.ndarray], shardings: Mapping[str, NamedSharding]
  ) -> None:
    key = sorted(host)[0]
    local = host[key].shape[0]
    global_shape = (local * self.pcount,) + host[key].shape[1:]
    # make_array_from_process_local_data lays the local rows, in order, over the global rows that
    # this process's devices address.
    rows = sorted(
      {
        r
        for idx in shardings[key].addressable_devices_indices_map(global_shape).values()
        for r in range(*idx[0].indices(global_shape[0]))
      }
    )
    hashes = []
    for j in range(local):
      h = hashlib.sha1()
      for k in sorted(host):
        h.update(np.ascontiguousarray(host[k][j]).tobytes())
      hashes.append(h.hexdigest()[:16])
    self._file.write(
      json.dumps(
        {
          "step": step,
          "process": self.pidx,
          "processes": self.pcount,
          "rows": rows,
          "row_hashes": hashes,
        }
      )
      + "\n"
    )

  def close(self) -> None:
    self._file.close()
