"""The spec/data contract (superpose.train.task): a host batch that is not what the spec declares
fails with a line that names the difference, before anything compiles."""

import jax
import numpy as np
import pytest

from superpose.train import task


def _batch(rows=4, width=16, **change):
  b = {
    "tokens": np.zeros((rows, width), np.int32),
    "targets": np.zeros((rows, width), np.int32),
    "weights": np.ones((rows, width), np.float32),
  }
  return {**b, **change}


def test_check_batch_names_the_difference():
  fields = task.rows_fields(8, 16)
  assert fields["weights"].dtype == "float32" and fields["tokens"].logical_axes() == ("batch", None)
  task.check_batch(_batch(rows=4), fields, process_count=2)  # this process's half
  task.check_batch(_batch(rows=8, width=12), fields)  # narrower (a length bucket)
  with pytest.raises(ValueError, match=r"missing \['weights'\], unexpected \['mask'\]"):
    b = _batch(rows=8)
    b["mask"] = b.pop("weights")
    task.check_batch(b, fields)
  with pytest.raises(
    ValueError, match=r"\['tokens'\]: int64\[8, 16\] but batch_spec says int32\[8, 16\]"
  ):
    task.check_batch(_batch(rows=8, tokens=np.zeros((8, 16), np.int64)), fields)
  with pytest.raises(ValueError, match="4 rows per process, no dimension wider"):
    task.check_batch(_batch(rows=8), fields, process_count=2)
  with pytest.raises(ValueError, match="no dimension wider"):
    task.check_batch(_batch(rows=8, width=17), fields)


def test_abstract_batch_is_what_the_planner_compiles_on():
  fields = {
    **task.rows_fields(8, 16, axes=("batch", "length")),
    "labels": task.Field((8,), "int32", ("batch",)),
  }
  ab = task.abstract_batch(fields)
  assert ab["tokens"] == jax.ShapeDtypeStruct((8, 16), np.int32) and ab["labels"].shape == (8,)
  assert fields["labels"].logical_axes() == ("batch",) and fields["tokens"].logical_axes() == (
    "batch",
    "length",
  )
