"""Residual compression: W = I is the compiled model, its loss is zero, a random small W is worse,
and a tiny sweep writes every output file."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projects.compiled import compress


@pytest.fixture(scope="module")
def study():
  return compress.build_study("frac_prevs", list("abcx"), 5, token="x", max_inputs=120)


def test_identity_reproduces_the_compiled_model(study):
  c, s = study.compiled, study.splits["test"]
  params = jax.tree.map(jnp.asarray, c.params)
  y, outs = jax.jit(compress.compressed_forward, static_argnums=0)(
    c.config, params, jnp.eye(study.D), jnp.asarray(s.ids), jnp.asarray(s.segments)
  )
  ref = c.forward(s.ids, s.segments, return_hidden=True)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(ref.logits_BTV))
  # Sublayer outputs add up to the residual stream's per-block increments.
  hidden = np.asarray(ref.hidden)
  per_block = np.asarray(outs).reshape(c.num_layers, 2, *outs.shape[1:]).sum(1)
  np.testing.assert_allclose(per_block, np.diff(hidden, axis=0), atol=1e-6)
  assert c.decode(y, s.segments) == c.decode(ref.logits_BTV, s.segments)
  assert compress.accuracy(study, np.asarray(y)[..., :1], "test").mean() == 1.0


def test_loss_is_zero_at_identity_and_a_random_small_W_is_worse(study):
  _, _, evaluate = compress.make_functions(study, layer_weight=1.0, batch_size=8)
  W_random = compress.initial_W(jax.random.key(0), study.D, 3, "normal")
  W_pad = (
    jnp.zeros((study.D, study.D)).at[:, :3].set(W_random)
  )  # d = 3, zero-padded to stack with I
  y, loss, cos = evaluate(jnp.stack([jnp.eye(study.D), W_pad]), "train")
  assert float(loss[0]) == 0.0 and float(loss[1]) > 1e-3
  acc_identity, acc_random = (
    compress.accuracy(study, np.asarray(y[i]), "train").mean() for i in range(2)
  )
  assert acc_identity == 1.0 and acc_random < 0.5
  live = np.asarray(cos[0]) != 0  # no-op sublayers have no output to compare
  # (the rank-1 MLP of is_x writes one direction, so only the attention's output can turn away)
  assert np.allclose(np.asarray(cos[0])[live], 1.0) and np.min(np.asarray(cos[1])[live]) < 0.9


def test_orthogonal_init_is_exact_at_full_width(study):
  W = compress.initial_W(jax.random.key(3), study.D, study.D, "orthogonal")
  np.testing.assert_allclose(np.asarray(W @ W.T), np.eye(study.D), atol=1e-5)
  W = compress.initial_W(jax.random.key(3), study.D, 4, "orthogonal")
  np.testing.assert_allclose(np.asarray(W.T @ W), np.eye(4), atol=1e-5)


def test_shared_directions():
  W = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.01, 0.0]])
  out = compress.shared_directions(W, ["a", "b", "c", "z"], cos_threshold=0.5, drop_fraction=0.2)
  assert out["dropped"] == ["z"]
  assert [(a, b) for a, b, _ in out["shared"]] == [("a", "b")]


def test_sort_unique_input_space():
  program = compress.make_program("sort_unique", [1, 2, 3], 3)
  inputs = compress.input_space("sort_unique", program, [1, 2, 3], 3)
  assert len(inputs) == 3 + 6 + 6 and all(len(set(x)) == len(x) for x in inputs)


def test_tiny_sweep_writes_its_files(tmp_path):
  path = pathlib.Path(__file__).parents[3] / "configs" / "compiled" / "compress.py"
  spec = importlib.util.spec_from_file_location("compress_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  results = compress.run(config, tmp_path)
  for name in (
    "results.json",
    "results.md",
    "accuracy_vs_d.png",
    "wtw_frac_prevs_d14.png",
    "W_frac_prevs.npz",
    "W_sort_unique.npz",
    "log.txt",
  ):
    assert (tmp_path / name).exists(), name
  saved = json.loads((tmp_path / "results.json").read_text())
  fp = saved["programs"]["frac_prevs"]
  assert fp["D"] == 14 and [p["d"] for p in fp["points"]] == [2, 14]
  point = fp["points"][1]
  assert (
    len(point["test_acc"]) == config.train.num_seeds
    and point["min"] <= point["median"] <= point["max"]
  )
  assert "| d | median acc |" in (tmp_path / "results.md").read_text()
  assert results["programs"]["sort_unique"]["D"] == 23
