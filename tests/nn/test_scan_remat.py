"""Layer scan, stack/unstack, rematerialisation and bf16 compute give the same numbers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpose import nn

V, T = 50, 12
CFG = nn.llama(
  vocab_size=V,
  d_model=32,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  max_seq_len=16,
  d_ff=64,
  use_bias=True,
)


@pytest.fixture(scope="module")
def looped():
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: nn.Transformer(CFG, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  state = jax.tree_util.tree_map_with_path(
    lambda p, a: jnp.asarray(
      ("scale" in jax.tree_util.keystr(p)) + 0.2 * rng.standard_normal(a.shape), a.dtype
    ),
    abstract,
  )
  return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(1)
  return jnp.asarray(rng.integers(0, V, (2, T)), jnp.int32), jnp.asarray(
    rng.integers(0, V, (2, T)), jnp.int32
  )


def with_config(model, **changes):
  """A model with a changed config and the same weights (scan layout converted as needed)."""
  cfg = model.cfg.replace(**changes)
  target = nnx.eval_shape(lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model)
  if cfg.scan_layers and not model.cfg.scan_layers:
    state = nn.stack_layers(state)
  nnx.update(target, state)
  return target


@functools.partial(jax.jit, static_argnums=0)
def loss_and_grads(graphdef, state, tokens, targets):
  def loss_fn(state):
    logits = nnx.merge(graphdef, state)(tokens).logits_BTV
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1).mean()

  return jax.value_and_grad(loss_fn)(state)


def test_stack_unstack_round_trip_and_metadata(looped):
  state = nnx.state(looped)
  stacked = nn.stack_layers(state)
  q = stacked["blocks"]["attn"]["q"]
  assert q.shape == (2, 32, 4, 8) and q.get_metadata()["out_sharding"] == (
    "layers",
    "embed",
    "heads",
    "head_dim",
  )
  abstract = nnx.state(
    nnx.eval_shape(lambda: nn.Transformer(CFG.replace(scan_layers=True), rngs=nnx.Rngs(0)))
  )
  assert jax.tree.structure(abstract) == jax.tree.structure(stacked)
  for v in jax.tree.leaves(abstract["blocks"], is_leaf=lambda v: isinstance(v, nnx.Variable)):
    assert v.get_metadata()["out_sharding"][0] == "layers" and v.shape[0] == 2
  back = nn.unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, back, state)
  pure = nn.stack_layers(nnx.to_pure_dict(state))  # plain dicts work too
  np.testing.assert_array_equal(pure["blocks"]["mlp"]["wo"], stacked["blocks"]["mlp"]["wo"][...])


def test_scan_equals_loop_forward_and_grads(looped, batch):
  scanned = with_config(looped, scan_layers=True)
  loss_a, grads_a = loss_and_grads(*nnx.split(looped), *batch)
  loss_b, grads_b = loss_and_grads(*nnx.split(scanned), *batch)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, atol=1e-6), nn.stack_layers(grads_a), grads_b
  )


@pytest.mark.parametrize("remat,scan", [("full", False), ("dots", True), ("dots_no_batch", False)])
def test_remat_changes_nothing(looped, batch, remat, scan):
  reference = looped if not scan else with_config(looped, scan_layers=True)
  loss_a, grads_a = loss_and_grads(*nnx.split(reference), *batch)
  graphdef, state = nnx.split(with_config(looped, scan_layers=scan, remat=remat))
  jaxpr = str(jax.make_jaxpr(loss_and_grads.__wrapped__, static_argnums=0)(graphdef, state, *batch))
  assert "checkpoint" in jaxpr or "remat" in jaxpr
  loss_b, grads_b = loss_and_grads(graphdef, state, *batch)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), grads_a, grads_b)


def test_bf16_compute_close_to_f32(looped, batch):
  bf16 = with_config(looped, dtype="bfloat16")
  run = nnx.jit(lambda m, t: m(t, return_hidden=True))
  ref, out = run(looped, batch[0]), run(bf16, batch[0])
  assert out.final_hidden_BTD.dtype == jnp.bfloat16 and out.logits_BTV.dtype == jnp.float32
  assert nnx.state(bf16)["token_embedding"].get_value().dtype == jnp.float32  # params stay f32
  logits, ref_logits = np.asarray(out.logits_BTV[..., :V]), np.asarray(ref.logits_BTV[..., :V])
  assert np.abs(logits - ref_logits).max() < 0.05 * np.abs(ref_logits).max()
  assert (logits.argmax(-1) == ref_logits.argmax(-1)).mean() > 0.9
