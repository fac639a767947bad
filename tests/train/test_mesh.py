import jax
import pytest
from jax.sharding import AxisType

from superpose.train.mesh import MeshError, fill_axes, make_mesh


@pytest.mark.parametrize(
  "ici,expected",
  [
    ((-1, 1, 1), (8, 1, 1)),
    ((1, -1, 1), (1, 8, 1)),
    ((2, 2, 2), (2, 2, 2)),
    ((2, -1, 2), (2, 2, 2)),
  ],
)
def test_mesh_shapes_and_auto_axis_types(devices8, ici, expected):
  mesh = make_mesh(ici)
  assert tuple(mesh.shape.values()) == expected
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_mesh_errors(devices8):
  with pytest.raises(MeshError, match="has 12 devices but 8 are available"):
    make_mesh((3, 2, 2))
  with pytest.raises(MeshError, match="at most one axis may be -1"):
    make_mesh((-1, -1, 1))
  with pytest.raises(MeshError, match="not divisible"):
    fill_axes((3, -1, 1), 8)


def test_multislice_mesh_on_fake_devices(devices8):
  # Two fake slices of 4 devices: data parallel across slices (DCN), fsdp within a slice (ICI).
  mesh = make_mesh(ici=(1, 4, 1), dcn=(2, 1, 1), devices=jax.devices())
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  # Devices of one data row are one contiguous block (one slice).
  assert sorted(d.id for d in mesh.devices[0].flat) == [0, 1, 2, 3]


def test_smaller_mesh_from_device_subset(devices8):
  mesh = make_mesh((2, 2, 1), devices=jax.devices()[:4])
  assert mesh.size == 4
