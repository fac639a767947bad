"""Test set-up: 8 fake CPU devices and a persistent compilation cache, before JAX is imported."""
import os
import pathlib

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_cache = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_cache))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(os.environ.get("SUPERPOSE_SHARED_DATA",
                                          pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def devices8():
  devs = jax.devices()
  assert len(devs) == 8, f"tests expect 8 fake CPU devices, got {len(devs)}"
  return devs


@pytest.fixture(scope="session")
def shared_data():
  if not SHARED_DATA.exists():
    pytest.skip(f"shared data not found at {SHARED_DATA}")
  return SHARED_DATA
