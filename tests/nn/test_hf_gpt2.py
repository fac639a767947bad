"""HF GPT-2 interop: the committed transformers fixture (fast), and live transformers + torch
(slow)."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from superpose import nn
from superpose.nn import hf_gpt2
from superpose.nn.testing import random_model
from superpose.train.state import pure_dict as _pure

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "hf_gpt2_tiny"
TOL = 1e-4


def logits(cfg, params, tokens):
  return np.asarray(hf_gpt2.to_model(cfg, params)(jnp.asarray(tokens)).logits_BTV)[
    ..., : cfg.vocab_size
  ]


def pure_params(model):
  return _pure(nnx.split(model, nnx.Param, ...)[1])


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tiny(**overrides):
  return nn.gpt2(
    **{**dict(vocab_size=100, d_model=32, num_layers=2, num_heads=4, max_seq_len=16), **overrides}
  )


# --- the committed fixture -----------------------------------------------------------------------


def test_fixture_logits_match_transformers():
  cfg, params = hf_gpt2.load_hf_gpt2(FIXTURE)
  assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.vocab_size, cfg.max_seq_len) == (
    32,
    2,
    4,
    100,
    32,
  )
  assert cfg.padded_vocab == 128 and params["token_embedding"].shape == (128, 32)
  np.testing.assert_array_equal(np.asarray(params["token_embedding"][100:]), 0)  # padding rows
  ours = logits(cfg, params, np.load(FIXTURE / "inputs.npy"))
  assert np.abs(ours - np.load(FIXTURE / "logits.npy")).max() < TOL


def test_export_round_trip_is_byte_exact():
  cfg, params = hf_gpt2.load_hf_gpt2(FIXTURE / "model.safetensors")  # a file, config.json beside it
  reference = hf_gpt2.read_safetensors(FIXTURE / "model.safetensors")
  exported = hf_gpt2.params_to_hf(cfg, params)
  assert sorted(exported) == sorted(reference)
  for name, array in reference.items():
    assert exported[name].dtype == array.dtype and exported[name].shape == array.shape, name
    assert exported[name].tobytes() == array.tobytes(), name


def test_scan_layers_import_and_export(tmp_path):
  cfg, params = hf_gpt2.load_hf_gpt2(FIXTURE)
  scan_cfg, scan_params = hf_gpt2.load_hf_gpt2(FIXTURE, scan_layers=True)
  assert scan_cfg.scan_layers and scan_params["blocks"]["attn"]["q"].shape == (2, 32, 4, 8)
  tokens = np.load(FIXTURE / "inputs.npy")
  np.testing.assert_allclose(
    logits(scan_cfg, scan_params, tokens), logits(cfg, params, tokens), atol=1e-5
  )
  exported = hf_gpt2.params_to_hf(scan_cfg, scan_params)
  for name, array in hf_gpt2.read_safetensors(FIXTURE / "model.safetensors").items():
    assert exported[name].tobytes() == array.tobytes(), name


def test_checkpoint_variants_load_the_same(tmp_path):
  """No ``transformer.`` prefix (GPT2Model), HF's mask buffers and a tied lm_head copy: same
  params."""
  _, params = hf_gpt2.load_hf_gpt2(FIXTURE)
  tensors = hf_gpt2.read_safetensors(FIXTURE / "model.safetensors")
  variant = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  for i in range(2):
    variant[f"h.{i}.attn.bias"] = np.tril(np.ones((32, 32), np.float32))[None, None]
    variant[f"h.{i}.attn.masked_bias"] = np.float32(-1e4)
  variant["lm_head.weight"] = tensors["transformer.wte.weight"]
  hf_gpt2.write_safetensors(tmp_path / "model.safetensors", variant)
  (tmp_path / "config.json").write_text((FIXTURE / "config.json").read_text())
  assert_trees_equal(hf_gpt2.load_hf_gpt2(tmp_path)[1], params)

  hf_gpt2.write_safetensors(
    tmp_path / "model.safetensors", {**variant, "score.weight": np.zeros((2, 32))}
  )
  with pytest.raises(ValueError, match="unexpected tensors.*score.weight"):
    hf_gpt2.load_hf_gpt2(tmp_path)
  del variant["wpe.weight"]
  hf_gpt2.write_safetensors(tmp_path / "model.safetensors", variant)
  with pytest.raises(ValueError, match="missing tensor 'wpe.weight'"):
    hf_gpt2.load_hf_gpt2(tmp_path)


# --- config mapping ------------------------------------------------------------------------------


def test_config_from_hf():
  hf = json.loads((FIXTURE / "config.json").read_text())
  cfg = hf_gpt2.config_from_hf(
    {
      **hf,
      "n_inner": 48,
      "activation_function": "gelu",
      "layer_norm_epsilon": 1e-6,
      "scale_attn_weights": False,
      "tie_word_embeddings": False,
    },
    param_dtype="bfloat16",
  )
  assert (
    cfg.d_ff,
    cfg.activation,
    cfg.norm_eps,
    cfg.attn_scale,
    cfg.tie_embeddings,
    cfg.param_dtype,
  ) == (48, "gelu", 1e-6, "one", False, "bfloat16")
  assert (
    hf_gpt2.config_from_hf({**hf, "activation_function": "gelu_pytorch_tanh"}).activation
    == "gelu_tanh"
  )
  assert hf_gpt2.config_from_hf(hf_gpt2.config_to_hf(cfg)) == cfg.replace(param_dtype="float32")

  bad = {
    **hf,
    "scale_attn_by_inverse_layer_idx": True,
    "reorder_and_upcast_attn": True,
    "activation_function": "silu",
    "model_type": "gpt_neo",
  }
  with pytest.raises(ValueError) as info:
    hf_gpt2.config_from_hf(bad)
  for needle in (
    "scale_attn_by_inverse_layer_idx=True",
    "reorder_and_upcast_attn=True",
    "'silu'",
    "'gpt_neo'",
  ):
    assert needle in str(info.value)


def test_config_to_hf_refuses_non_gpt2_models():
  with pytest.raises(ValueError) as info:
    hf_gpt2.config_to_hf(
      nn.llama(vocab_size=100, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2)
    )
  for needle in (
    "norm='rmsnorm'",
    "positions='rope'",
    "activation='swiglu'",
    "num_kv_heads=2",
    "use_bias=False",
  ):
    assert needle in str(info.value)
  with pytest.raises(ValueError, match="attn_scale=0.5"):
    hf_gpt2.save_hf_gpt2(tiny(attn_scale=0.5), {}, "unused")


# --- our models out and back ---------------------------------------------------------------------


@pytest.mark.parametrize(
  "overrides",
  [
    dict(),
    dict(scan_layers=True, tie_embeddings=False, activation="gelu", d_ff=48),
    dict(param_dtype="bfloat16", vocab_size=130),
  ],
  ids=["tied", "scan_untied_gelu", "bf16"],
)
def test_random_model_export_reimport(tmp_path, overrides):
  cfg = tiny(**overrides)
  params = pure_params(random_model(cfg, seed=1))
  if cfg.padded_vocab > cfg.vocab_size:  # the loader pads with zeros: start from such a model
    params["token_embedding"] = params["token_embedding"].at[cfg.vocab_size :].set(0)
    if "unembedding" in params:
      params["unembedding"] = params["unembedding"].at[:, cfg.vocab_size :].set(0)
  hf_gpt2.save_hf_gpt2(cfg, params, tmp_path)
  tensors = hf_gpt2.read_safetensors(tmp_path / "model.safetensors")
  assert tensors["transformer.wte.weight"].shape == (cfg.vocab_size, 32)
  assert tensors["transformer.wte.weight"].dtype == cfg.params_dtype
  assert ("lm_head.weight" in tensors) == (not cfg.tie_embeddings)
  cfg2, params2 = hf_gpt2.load_hf_gpt2(
    tmp_path, scan_layers=cfg.scan_layers, param_dtype=cfg.param_dtype
  )
  assert cfg2 == cfg
  assert_trees_equal(params2, params)


def test_safetensors_codec_dtypes(tmp_path):
  tensors = {
    "bf16": np.arange(6).astype(ml_dtypes.bfloat16).reshape(2, 3),
    "f16": np.full(3, 0.1, np.float16),
    "f32": np.linspace(-1, 1, 5, dtype=np.float32),
    "i64": np.arange(4),
    "empty": np.zeros((0, 2), np.float32),
  }
  hf_gpt2.write_safetensors(tmp_path / "t.safetensors", tensors)
  raw = (tmp_path / "t.safetensors").read_bytes()
  header_len = int.from_bytes(raw[:8], "little")
  assert header_len % 8 == 0 and json.loads(raw[8 : 8 + header_len])["bf16"]["dtype"] == "BF16"
  back = hf_gpt2.read_safetensors(tmp_path / "t.safetensors")
  assert_trees_equal(back, tensors)


def test_pytorch_checkpoint_without_torch_says_how_to_fix(tmp_path, monkeypatch):
  (tmp_path / "config.json").write_text((FIXTURE / "config.json").read_text())
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(ImportError, match="pip install torch"):
    hf_gpt2.load_hf_gpt2(tmp_path)


def test_safetensors_path_needs_neither_torch_nor_safetensors():
  code = (
    "import sys; from superpose.nn import hf_gpt2; hf_gpt2.load_hf_gpt2(sys.argv[1]); "
    "print(sorted(m for m in ('torch', 'safetensors', 'transformers') if m in sys.modules))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code, str(FIXTURE)], capture_output=True, text=True, check=True
  )
  assert result.stdout.strip() == "[]"


# --- live transformers ---------------------------------------------------------------------------


@pytest.mark.slow
def test_live_transformers_both_ways(tmp_path):
  torch = pytest.importorskip(
    "torch", reason="the live HF comparison needs torch (pip install torch)"
  )
  transformers = pytest.importorskip(
    "transformers", reason="the live HF comparison needs transformers"
  )
  gen = torch.Generator().manual_seed(1)
  hf_cfg = transformers.GPT2Config(
    n_embd=64,
    n_layer=3,
    n_head=4,
    vocab_size=300,
    n_positions=40,
    n_inner=96,
    bos_token_id=299,
    eos_token_id=299,
    attn_implementation="eager",
  )
  hf_model = transformers.GPT2LMHeadModel(hf_cfg).eval()
  with torch.no_grad():  # HF starts biases at 0 and LayerNorm at (1, 0): perturb every tensor
    for name, p in hf_model.named_parameters():
      noise = 0.1 * torch.randn(p.shape, generator=gen)
      p.add_(noise) if ".ln_" in name and name.endswith(".weight") else p.copy_(noise)
  tokens = torch.randint(0, 300, (3, 40), generator=gen)
  with torch.no_grad():
    reference = hf_model(tokens).logits.numpy()

  # HF → ours: save_pretrained (safetensors), and an old-style pytorch_model.bin with mask buffers.
  hf_model.save_pretrained(tmp_path / "st")
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
  state = {
    **hf_model.state_dict(),
    "transformer.h.0.attn.bias": torch.tril(torch.ones(1, 1, 40, 40)),
  }
  torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
  for sub in ("st", "bin"):
    cfg, params = hf_gpt2.load_hf_gpt2(tmp_path / sub)
    diff = np.abs(logits(cfg, params, tokens.numpy()) - reference).max()
    print(f"HF -> superpose ({sub}): max abs logit difference {diff:.3g}")
    assert diff < TOL

  # Ours → HF: random superpose models through save_hf_gpt2, tied (gelu_tanh, looped) and untied
  # (exact gelu, scanned, d_ff != 4·d), in both formats.
  for overrides in (
    dict(),
    dict(activation="gelu", tie_embeddings=False, scan_layers=True, d_ff=96),
  ):
    cfg = nn.gpt2(
      vocab_size=300, d_model=64, num_layers=3, num_heads=4, max_seq_len=40, **overrides
    )
    params = pure_params(random_model(cfg, seed=2, scale=0.1))
    ours = logits(cfg, params, tokens.numpy())
    for fmt in ("safetensors", "pytorch"):
      out = hf_gpt2.save_hf_gpt2(cfg, params, tmp_path / f"out_{len(overrides)}_{fmt}", format=fmt)
      loaded, info = transformers.GPT2LMHeadModel.from_pretrained(
        out, attn_implementation="eager", output_loading_info=True
      )
      assert not info["missing_keys"] and not info["unexpected_keys"], info
      with torch.no_grad():
        theirs = loaded.eval()(tokens).logits.numpy()
      diff = np.abs(theirs - ours).max()
      print(
        f"superpose -> HF ({cfg.activation}, tied={cfg.tie_embeddings}, {fmt}): "
        f"max abs logit difference {diff:.3g}"
      )
      assert diff < TOL
