"""TransformerConfig: validation, resolved properties, presets, from_dict."""

import dataclasses

import jax
import ml_collections
import pytest

from superpose import nn
from superpose.nn import config as config_lib


def test_defaults_resolve():
  cfg = nn.TransformerConfig(vocab_size=300, d_model=64, num_heads=8, vocab_multiple=128)
  assert cfg.kv_heads == 8 and cfg.head_size == 8 and cfg.padded_vocab == 384
  assert cfg.scale == pytest.approx(1 / 8**0.5)
  assert cfg.replace(attn_scale="one").scale == 1.0 and cfg.replace(attn_scale=0.25).scale == 0.25
  assert nn.TransformerConfig(vocab_size=256, vocab_multiple=128).padded_vocab == 256
  gqa = cfg.replace(num_kv_heads=2, head_dim=12)
  assert gqa.kv_heads == 2 and gqa.head_size == 12


def test_config_is_hashable_static_jit_arg():
  cfg = nn.gpt2(d_model=32, num_heads=4, num_layers=1, vocab_size=10)
  assert hash(cfg) == hash(nn.gpt2(d_model=32, num_heads=4, num_layers=1, vocab_size=10))
  f = jax.jit(lambda c: c.d_ff, static_argnums=0)
  assert int(f(cfg)) == 128
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.d_model = 3


def test_every_bad_value_gets_its_own_line():
  with pytest.raises(ValueError) as err:
    nn.TransformerConfig(
      d_model=30,
      num_heads=4,
      norm="batchnorm",
      activation="tanh",
      num_kv_heads=3,
      attn_scale="half",
      remat="some",
      d_ff=0,
    )
  lines = str(err.value).splitlines()[1:]
  for needle in (
    "model.d_ff=0",
    "model.norm='batchnorm'",
    "model.activation='tanh'",
    "model.remat='some'",
    "model.attn_scale='half'",
    "model.num_kv_heads=3",
    "head_dim=None",
  ):
    assert sum(needle in line for line in lines) == 1, (needle, lines)
  assert len(lines) == 7


def test_rope_needs_even_head_dim():
  with pytest.raises(ValueError, match="rope needs an even head dimension"):
    nn.llama(d_model=30, num_heads=2, num_kv_heads=1, head_dim=15)


def test_presets():
  g = nn.gpt2()
  assert (g.d_model, g.num_layers, g.num_heads, g.d_ff, g.max_seq_len, g.vocab_size) == (
    768,
    12,
    12,
    3072,
    1024,
    50257,
  )
  assert g.norm == "layernorm" and g.norm_eps == 1e-5 and g.activation == "gelu_tanh"
  assert g.positions == "learned" and g.tie_embeddings and g.use_bias and g.final_norm
  assert nn.gpt2(d_model=64, num_heads=4).d_ff == 256
  assert nn.gpt2(activation="gelu").activation == "gelu"
  l = nn.llama(d_model=96, num_heads=6, num_kv_heads=2)
  assert l.norm == "rmsnorm" and l.positions == "rope" and l.activation == "swiglu"
  assert not l.use_bias and not l.tie_embeddings and l.kv_heads == 2 and l.d_ff == 256
  assert set(nn.PRESETS) >= {"gpt2", "llama"}


def test_from_dict_plain_and_configdict():
  cfg = nn.from_dict({"preset": "gpt2", "d_model": 64, "num_heads": 4, "num_layers": 2})
  assert cfg == nn.gpt2(d_model=64, num_heads=4, num_layers=2)
  cd = ml_collections.ConfigDict(
    dict(preset="llama", d_model=64, num_heads=4, num_kv_heads=2, d_ff=128)
  )
  assert nn.from_dict(cd) == nn.llama(d_model=64, num_heads=4, num_kv_heads=2, d_ff=128)
  assert nn.from_dict({"d_model": 32, "num_heads": 2}) == nn.TransformerConfig(
    d_model=32, num_heads=2
  )


def test_from_dict_unknown_key_is_one_clear_line():
  with pytest.raises(
    ValueError, match=r"^model: unknown key 'xyz' \(known: preset, vocab_size, d_model"
  ):
    nn.from_dict({"preset": "gpt2", "xyz": 1})
  with pytest.raises(ValueError, match="unknown preset 'bert'"):
    nn.from_dict({"preset": "bert"})
  with pytest.raises(ValueError, match="model: unknown key 'd_modle'"):
    nn.gpt2(d_modle=3)
  assert "vocab_size" in config_lib.FIELDS and len(config_lib.FIELDS) == len(set(config_lib.FIELDS))
