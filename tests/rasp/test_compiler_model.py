"""The compiled model is an ordinary superpose.nn model: labelled residual, forward, save/load,
sharding."""

import jax
import numpy as np
import pytest
from flax import nnx

from superpose import nn, rasp
from superpose.nn import sharding as shd
from superpose.rasp import lib
from superpose.rasp.compiler import CompiledModel, compile_rasp
from superpose.train import checkpoint, state as state_lib
from superpose.train.mesh import make_mesh


@pytest.fixture(scope="module")
def frac():
  return compile_rasp(
    lib.make_frac_prevs((rasp.tokens == "x").named("is_x")).named("frac_prevs"),
    {"a", "b", "c", "x"},
    5,
  )


@pytest.fixture(scope="module")
def sort():
  return compile_rasp(
    lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=5, min_key=1), {1, 2, 3, 4}, 5
  )


def test_config_is_tracr_shaped(frac):
  cfg = frac.config
  assert (
    cfg.norm,
    cfg.final_norm,
    cfg.activation,
    cfg.tie_embeddings,
    cfg.use_bias,
    cfg.attn_scale,
  ) == ("none", False, "relu", False, False, "one")
  assert cfg.max_seq_len == 6 and cfg.num_layers == 2 and cfg.d_model == 14


def test_residual_basis_is_labelled(frac):
  labels = frac.residual_labels
  assert labels[:3] == ["one", "tokens:BOS", "tokens:PAD"]
  assert {"tokens:x", "indices:0", "indices:4"} <= set(labels)
  assert any(lab.startswith("is_x") for lab in labels) and labels[-1].startswith("frac_prevs")
  hidden, names = frac.residual("xax")
  assert hidden.shape == (3, 4, 14) and names == labels
  final = dict(zip(labels, hidden[-1, 2]))  # after the last layer, at token 'a' (position 2)
  assert (
    final[labels[-1]] == pytest.approx(0.5) and final["tokens:a"] == 1 and final["indices:1"] == 1
  )
  np.testing.assert_array_equal(hidden[:, 0, labels.index("tokens:BOS")], 1)  # BOS stays clean
  assert np.abs(hidden[-1, 0, labels.index(labels[-1])]) < 1e-6


def test_layer_allocation_matches_tracr_for_frac_prevs(frac):
  assert [bool(l["attention"]) for l in frac.layer_allocation] == [False, True]
  assert [bool(l["mlp"]) for l in frac.layer_allocation] == [True, False]
  text = frac.explain()
  assert "layer 0: attention [no-op]" in text and "tokens:x" in text


def test_forward_and_decode_a_batch(sort):
  batch = [[2, 4, 3, 1], [3, 1], [4, 4, 1, 2, 2]]
  ids, segments = sort.encode(batch)
  assert ids.shape == (3, 6) and segments.sum() == 3 + 4 + 2 + 5
  out = sort.forward(ids, segments)
  assert out.logits_BTV.shape == (3, 6, sort.config.vocab_size)
  assert sort.decode(out.logits_BTV, segments) == [sorted(xs) for xs in batch]
  model = sort.model()
  assert isinstance(model, nn.Transformer)
  np.testing.assert_allclose(
    model(ids, segment_ids_BT=segments).logits_BTV, out.logits_BTV, atol=1e-5
  )


def test_encode_rejects_unknown_tokens_and_long_inputs(sort):
  with pytest.raises(ValueError, match="not in the vocab"):
    sort.encode([[1, 7]])
  with pytest.raises(ValueError, match="up to 5 tokens"):
    sort.encode([[1] * 6])
  assert sort.apply(["BOS", 3, 1]) == [1, 3]  # an explicit BOS is accepted


def test_save_load_round_trip(sort, tmp_path):
  sort.save(tmp_path / "sort")
  loaded = CompiledModel.load(tmp_path / "sort")
  assert loaded.config == sort.config and loaded.residual_labels == sort.residual_labels
  assert loaded.tokens == sort.tokens and loaded.output_values == sort.output_values
  assert loaded.apply([3, 1, 2, 2]) == [1, 2, 2, 3]
  # the repo's checkpoint reader alone gives the transformer its weights
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, abs_params, _ = state_lib.split_model(
    lambda: nn.Transformer(sort.config, rngs=nnx.Rngs(0)), mesh
  )
  params = checkpoint.load_params(tmp_path / "sort", abs_params)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), sort.params)


@pytest.mark.parametrize("ici", [(1, 8, 1), (2, 2, 2), (8, 1, 1)])
def test_sharded_forward_equals_unsharded(sort, ici, devices8):
  batch = [[2, 4, 3, 1], [3, 1], [4, 4, 1, 2, 2], [1], [2, 2], [3, 2, 1], [4, 3], [1, 1, 1]]
  ids, segments = sort.encode(batch, length=6)
  reference = np.asarray(sort.forward(ids, segments).logits_BTV)
  mesh = make_mesh(ici)
  with jax.set_mesh(mesh), shd.axis_rules(shd.DEFAULT_RULES):
    _, _, shardings = state_lib.split_model(
      lambda: nn.Transformer(sort.config, rngs=nnx.Rngs(0)), mesh
    )
    placed = jax.device_put(sort.params, shardings)
    logits = sort.forward(ids, segments, params=placed).logits_BTV
  np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-5)
  assert sort.decode(logits, segments) == [sorted(xs) for xs in batch]
