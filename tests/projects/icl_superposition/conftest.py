"""Shared fixtures of the ICL tests: the lookup tables from ../shared/data/icl_tables (skipped when
absent)."""

import json

import pytest

from projects.icl_superposition import tables


@pytest.fixture(scope="module")
def icl_tables(shared_data):
  """The raw JSON tables by file stem; the module reads the same folder while the fixture is
  active."""
  folder = shared_data / "icl_tables"
  if not (folder / "en_dict.json").exists():
    pytest.skip(f"ICL tables not found under {folder}")
  tables.set_tables_dir(folder)
  yield {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")}
  tables.set_tables_dir(None)
