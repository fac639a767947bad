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

SHARED_DATA = pathlib.Path(
  os.environ.get(
    "SUPERPOSE_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
  )
)


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


@pytest.fixture(scope="session")
def check_sampling():
  """``check(workdir, prompt)``: ``launch.sample`` on any project's run (greedy, 3 new tokens)
  starts with the prompt and continues with the argmax of the loaded model's own forward after
  it."""
  import numpy as np
  from launch import sample
  from superpose.train.loader import load_model

  def check(workdir, prompt: str) -> str:
    out = sample.sample(str(workdir), [prompt], 3, 0.0, None, 0)[0]
    run = load_model(workdir)
    tok = run.spec.tokenizer()
    ids = ([tok.bos_id] if tok.bos_id is not None else []) + list(tok.encode(prompt))
    logits = run.model(np.asarray([ids], np.int32))
    first = int(np.argmax(np.asarray(getattr(logits, "logits_BTV", logits))[0, -1]))
    rest = out[len(prompt) + len(getattr(tok, "sep", "")) :] if len(out) > len(prompt) else ""
    assert out.startswith(prompt) and rest.startswith(tok.decode([first])), (out, first)
    return out

  return check
