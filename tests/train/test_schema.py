import pytest

from configs.lm import tiny
from superpose import nn
from superpose.train import config as config_lib


def test_tiny_config_builds_its_model():
  for variant in ("", "smoke"):
    cfg = tiny.get_config(variant)
    config_lib.check_schema(cfg.to_dict())
    model = nn.from_dict(cfg.model)
    assert model.vocab_size == 257 and model.padded_vocab == 384 and model.norm == "layernorm"
  with pytest.raises(ValueError, match="unknown variant 'big'"):
    tiny.get_config("big")


def test_model_section_exposes_every_field_with_types():
  c = config_lib.model_section("llama", vocab_size=300, d_model=64, num_heads=4, num_layers=2)
  assert set(c.keys()) == {"preset", *nn.config.FIELDS}
  c.num_kv_heads = 2          # a typed placeholder accepts an int ...
  with pytest.raises(TypeError):
    c.head_dim = "wide"       # ... and refuses other types, as a command-line override would
  c.attn_scale = "0.5"        # numbers arrive as text for this union field
  m = nn.from_dict(c)
  assert m.kv_heads == 2 and m.scale == 0.5 and m.activation == "swiglu" and m.d_ff == 192


def test_unknown_keys_are_reported_with_their_path():
  cfg = tiny.get_config("smoke").to_dict()
  cfg["train"]["stepz"] = 3
  with pytest.raises(config_lib.ConfigError, match=r"config.train.stepz: unknown config key"):
    config_lib.check_schema(cfg)
  cfg = tiny.get_config("smoke").to_dict()
  cfg["model"]["d_modell"] = 3
  with pytest.raises(ValueError, match="model: unknown key 'd_modell'"):
    nn.from_dict(cfg["model"])


def test_mesh_and_train_checks():
  cfg = tiny.get_config("smoke").to_dict()
  cfg["mesh"]["ici"] = (2, 2, 1)
  with pytest.raises(config_lib.ConfigError, match="2×2×1 = 4 devices, but 8 are available"):
    config_lib.check_mesh(cfg, 8)
  cfg["mesh"]["ici"] = (2, -1, 1)
  config_lib.check_mesh(cfg, 8)
  cfg["train"]["accum_steps"] = 3
  with pytest.raises(config_lib.ConfigError, match="not divisible by accum_steps=3"):
    config_lib.check_train(cfg)
