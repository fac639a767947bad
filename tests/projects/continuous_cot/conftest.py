"""Fixtures shared by the continuous_cot tests."""

import pytest

from projects.continuous_cot import data


@pytest.fixture(scope="module")
def released(shared_data):
  """The released ProsQA validation files (../shared/data/prosqa), loaded; skipped where absent."""
  folder = shared_data / "prosqa"
  if not all((folder / name).exists() for name in data.RELEASED.values()):
    pytest.skip(f"released ProsQA files not found under {folder}")
  return {name: data.load(folder / file) for name, file in data.RELEASED.items()}
