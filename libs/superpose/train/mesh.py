"""The one helper that builds every device mesh, and multi-process start-up."""

from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")


class MeshError(ValueError):
  pass


def fill_axes(sizes: Sequence[int], total: int, what: str = "mesh") -> tuple[int, ...]:
  """Replace the single ``-1`` in ``sizes`` so that the product is ``total``."""
  sizes = tuple(int(s) for s in sizes)
  if sizes.count(-1) > 1:
    raise MeshError(f"{what} {sizes}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise MeshError(f"{what} {sizes}: sizes must be positive or -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if total % known:
      raise MeshError(f"{what} {sizes}: {total} devices are not divisible by {known}")
    sizes = tuple(total // known if s == -1 else s for s in sizes)
  if math.prod(sizes) != total:
    raise MeshError(
      f"{what} {dict(zip(AXES, sizes))} has {math.prod(sizes)} devices but {total} are available"
    )
  return sizes


def make_mesh(
  ici: Sequence[int] = (-1, 1, 1),
  dcn: Sequence[int] | None = None,
  axis_names: Sequence[str] = AXES,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Mesh over ``axis_names`` with Auto axis types (GSPMD style; jax.make_mesh defaults to
  Explicit).

  ``ici`` are the sizes within a slice; ``dcn`` (optional) the sizes across slices, whose product is
  the number of slices. The total size of an axis is ``ici * dcn``. One ``-1`` per group is filled
  in.
  """
  devices = list(jax.devices() if devices is None else devices)
  if len(ici) != len(axis_names):
    raise MeshError(f"mesh sizes {tuple(ici)} do not match axis names {tuple(axis_names)}")
  if dcn is None or math.prod(abs(d) for d in dcn) == 1 and -1 not in dcn:
    shape = fill_axes(ici, len(devices))
    if len(devices) == 1 or devices[0].platform == "cpu":
      arr = np.asarray(devices).reshape(shape)
    else:
      arr = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  else:
    if hasattr(devices[0], "slice_index"):
      num_slices = len({d.slice_index for d in devices})
    else:  # fake slices (CPU tests): as many as the dcn sizes ask for
      num_slices = math.prod(dcn) if -1 not in dcn else 1
    dcn = fill_axes(dcn, num_slices, "dcn mesh")
    ici = fill_axes(ici, len(devices) // num_slices, "ici mesh")
    if devices[0].platform == "cpu":  # fake slices for tests: contiguous device blocks
      shape = tuple(i * d for i, d in zip(ici, dcn))
      arr = np.asarray(devices).reshape(dcn + ici)
      n = len(ici)
      arr = arr.transpose([k for pair in zip(range(n), range(n, 2 * n)) for k in pair]).reshape(
        shape
      )
    else:
      arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
  return Mesh(arr, tuple(axis_names), axis_types=(AxisType.Auto,) * len(axis_names))


def maybe_initialize_distributed(
  enabled: bool | str = "auto",
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Start ``jax.distributed`` when asked (or, with "auto", when a cluster environment is present).

  Must run before the first JAX computation. Returns whether a multi-process runtime was started.
  """
  env = os.environ
  if enabled == "auto":
    enabled = bool(
      coordinator
      or env.get("JAX_COORDINATOR_ADDRESS")
      or env.get("SUPERPOSE_DISTRIBUTED")
      or env.get("TPU_WORKER_HOSTNAMES", "").count(",")
      or env.get("SLURM_NTASKS", "1") != "1"
    )
  if not enabled:
    return False
  kwargs = {}
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
  if coordinator:
    kwargs["coordinator_address"] = coordinator
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if num_processes is not None:
    kwargs["num_processes"] = num_processes
  if process_id is not None:
    kwargs["process_id"] = process_id
  jax.distributed.initialize(**kwargs)
  log.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True
