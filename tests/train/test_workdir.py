"""The workdir before a run writes to it: usable, and its config.json as the contract of a
resume."""

import json
import os
import re

import pytest

from configs.lm import tiny
from superpose.train import workdir as workdir_lib
from superpose.train.config import ConfigError


def _cfg():
  return tiny.get_config("smoke").to_dict()


def test_a_file_or_an_unwritable_directory_is_refused(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ConfigError, match="is a file, not a directory"):
    workdir_lib.check_writable(tmp_path / "file")
  with pytest.raises(ConfigError, match=r"file is a file, not a directory"):
    workdir_lib.check_writable(tmp_path / "file" / "run")
  workdir_lib.check_writable(tmp_path / "new" / "run")  # created later, under a writable parent
  assert not (tmp_path / "new").exists()  # the check writes nothing
  # Not writable (os.access, as root would see a read-only mount).
  real = os.access
  monkeypatch.setattr(
    workdir_lib.os,
    "access",
    lambda p, mode: False if str(p) == str(tmp_path / "ro") else real(p, mode),
  )
  (tmp_path / "ro").mkdir()
  with pytest.raises(ConfigError, match="ro is not writable"):
    workdir_lib.check_writable(tmp_path / "ro")
  with pytest.raises(ConfigError, match="its parent .*ro is not writable"):
    workdir_lib.check_writable(tmp_path / "ro" / "run")


def _save(workdir, cfg, checkpoint=True):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(json.dumps(cfg, default=str))
  if checkpoint:
    (workdir / "checkpoints" / "5").mkdir(parents=True, exist_ok=True)


def test_resume_may_change_bookkeeping_keys_only(tmp_path):
  w = tmp_path / "w"
  assert workdir_lib.check_resume(w, _cfg()) == {}  # a new workdir: nothing to compare
  _save(w, _cfg())
  assert workdir_lib.check_resume(w, _cfg()) == {}
  cfg = _cfg()
  cfg["train"].update(steps=40, log_every=1, checkpoint_every=2, progress=False)
  cfg["mesh"]["ici"] = (2, -1, 1)
  changes = workdir_lib.check_resume(w, cfg)
  assert set(changes) == {
    "train.steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.progress",
    "mesh.ici",
  }
  assert changes["train.steps"] == (20, 40, "free")


@pytest.mark.parametrize(
  "key,value",
  [
    ("model.activation", "relu"),
    ("model.d_model", 128),
    ("data.path", "other.txt"),
    ("seed", 1),
    ("train.batch_size", 16),
    ("train.seq_len", 32),
    ("optim.frozen", ("blocks/.*",)),
    ("trainer", "x.y"),
    ("optim.clip_norm", 0.0),  # clipping on → off changes the optimizer state's structure
  ],
)
def test_resume_may_never_change_what_defines_the_run(tmp_path, key, value):
  _save(tmp_path, _cfg())
  cfg = _cfg()
  section, _, name = key.rpartition(".")
  (cfg[section] if section else cfg)[name] = value
  cfg["train"]["allow_changes"] = True  # not even with the flag
  with pytest.raises(ConfigError, match=f"cannot change on resume: {key} ") as e:
    workdir_lib.check_resume(tmp_path, cfg)
  assert "\n" not in str(e.value)


def test_optimizer_groups_by_their_keys(tmp_path):
  old = _cfg()
  old["optim"]["groups"] = ({"pattern": "blocks/.*", "lr": 1e-3},)
  _save(tmp_path, old)
  cfg = _cfg()
  cfg["optim"]["groups"] = ({"pattern": "blocks/.*", "lr": 2e-3},)
  cfg["train"]["allow_changes"] = True
  assert workdir_lib.check_resume(tmp_path, cfg)["optim.groups.0.lr"] == (1e-3, 2e-3, "safe")
  for groups, key in [
    (({"pattern": "blocks/.*", "lr": 1e-3, "clip_norm": 1.0},), "optim.groups.0.clip_norm"),
    (({"pattern": "embed/.*", "lr": 1e-3},), "optim.groups.0.pattern"),
    ((), "optim.groups"),
  ]:
    cfg["optim"]["groups"] = groups
    with pytest.raises(ConfigError, match=f"cannot change on resume: {re.escape(key)}"):
      workdir_lib.check_resume(tmp_path, cfg)


def test_state_preserving_changes_need_the_flag(tmp_path):
  _save(tmp_path, _cfg())
  cfg = _cfg()
  cfg["optim"]["lr"] = 1e-4
  cfg["train"]["accum_steps"] = 2
  cfg["optim"]["clip_norm"] = 0.5
  with pytest.raises(
    ConfigError,
    match=r"optim\.clip_norm \(1\.0 → 0\.5\), optim\.lr \(0\.003 → 0\.0001\), "
    r"train\.accum_steps \(1 → 2\); rerun with --config\.train\.allow_changes=True",
  ):
    workdir_lib.check_resume(tmp_path, cfg)
  cfg["train"]["allow_changes"] = True
  changes = workdir_lib.check_resume(tmp_path, cfg)
  assert {k: v[2] for k, v in changes.items()} == {
    "optim.lr": "safe",
    "train.accum_steps": "safe",
    "optim.clip_norm": "safe",
    "train.allow_changes": "free",
  }


def test_a_workdir_without_a_checkpoint_starts_over_with_any_config(tmp_path):
  _save(tmp_path, _cfg(), checkpoint=False)  # a run that ended before its first checkpoint
  cfg = _cfg()
  cfg["model"]["d_model"] = 128
  assert workdir_lib.check_resume(tmp_path, cfg) == {}


def test_a_key_added_to_the_schema_since_the_save_keeps_its_default(tmp_path):
  old = _cfg()
  del old["train"]["allow_changes"], old["peer_timeout_s"]  # a config.json from before these keys
  _save(tmp_path, old)
  assert workdir_lib.check_resume(tmp_path, _cfg()) == {}
  cfg = _cfg()
  cfg["peer_timeout_s"] = 12.0
  assert workdir_lib.check_resume(tmp_path, cfg)["peer_timeout_s"][2] == "free"
