"""Loss and gradients are the same on every mesh, and parameters are really sharded."""

import jax
import numpy as np
import pytest

from configs.lm import tiny
from superpose.nn import sharding as shd
from superpose.train import config as config_lib, lm, optim, state as state_lib, step as step_lib
from superpose.train.mesh import make_mesh

MESHES = {"unsharded": None, "1x8x1": (1, 8, 1), "8x1x1": (8, 1, 1), "2x2x2": (2, 2, 2)}


@pytest.fixture(scope="module")
def task():
  cfg = config_lib.to_dict(tiny.get_config("smoke"))
  # heads, kv heads, d_ff and the padded vocab all divide 2 and 8, so every weight can be sharded.
  cfg["model"].update(num_heads=4, d_model=64, d_ff=256)
  return lm.make_task(cfg)


def _loss_and_grads(task, ici):
  mesh = make_mesh(ici) if ici else make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh), shd.axis_rules(shd.DEFAULT_RULES):
    graphdef, abs_params, _ = state_lib.split_model(task.spec.make_model, mesh)
    tx, _ = optim.make_optimizer({"lr": 1e-3}, abs_params, 10)
    state, state_sh = state_lib.create(task.spec.make_model, tx, abs_params, mesh)
    host = task.data.train_batch(1, 0, 1)
    batch_sh = {
      k: jax.sharding.NamedSharding(mesh, shd.spec_for(("batch", "length"), v.shape, mesh))
      for k, v in host.items()
    }
    batch = {k: jax.device_put(v, batch_sh[k]) for k, v in host.items()}
    grad_fn = jax.jit(
      jax.value_and_grad(lambda p, b: task.spec.train_loss(state_lib.merge(graphdef, p), b)[0]),
      in_shardings=(state_sh["params"], batch_sh),
    )
    loss, grads = grad_fn(state["params"], batch)
    train_step = step_lib.jit_train_step(
      step_lib.make_train_step(graphdef, task.spec.train_loss, tx), state_sh, batch_sh
    )
    losses = []
    for s in range(1, 4):
      b = {k: jax.device_put(v, batch_sh[k]) for k, v in task.data.train_batch(s, 0, 1).items()}
      state, m = train_step(state, b)
      losses.append(float(m["loss"]))
    return mesh, state, float(loss), jax.device_get(grads), losses


@pytest.fixture(scope="module")
def results(task):
  return {name: _loss_and_grads(task, ici) for name, ici in MESHES.items()}


@pytest.mark.parametrize("name", ["1x8x1", "8x1x1", "2x2x2"])
def test_loss_and_gradients_equal_across_meshes(results, name):
  _, _, loss0, grads0, losses0 = results["unsharded"]
  _, _, loss, grads, losses = results[name]
  np.testing.assert_allclose(loss, loss0, rtol=1e-5)
  np.testing.assert_allclose(losses, losses0, rtol=1e-4)
  for (path, g), g0 in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(grads0)):
    np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name,expected_shards", [("1x8x1", 8), ("2x2x2", 4), ("8x1x1", 1)])
def test_weights_hold_their_share_of_bytes_per_device(results, name, expected_shards):
  mesh, state, *_ = results[name]
  matrices = 0
  for path, w in jax.tree_util.tree_flatten_with_path(state["params"])[0]:
    if w.ndim < 2:
      continue
    n = shd.shard_count(w.sharding)
    per_device = max(s.data.nbytes for s in w.addressable_shards)
    assert per_device <= w.nbytes // n, jax.tree_util.keystr(path)
    # Projection matrices and the embedding are cut fsdp × tensor ways (biases may be replicated).
    if path[-1].key in ("q", "k", "v", "o", "wi", "wo", "token_embedding"):
      assert n >= expected_shards, (jax.tree_util.keystr(path), w.sharding.spec)
      matrices += 1
  assert matrices == 2 * 6 + 1
  # The Adam moments are sharded like their parameters.
  params = {
    jax.tree_util.keystr(p): w for p, w in jax.tree_util.tree_flatten_with_path(state["params"])[0]
  }
  moments = 0
  for path, x in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]:
    names = [getattr(k, "name", None) for k in path]
    if "mu" in names or "nu" in names:
      i = max(i for i, n in enumerate(names) if n in ("mu", "nu"))
      w = params[jax.tree_util.keystr(path[i + 1 :])]
      assert x.sharding.spec == w.sharding.spec, jax.tree_util.keystr(path)
      moments += 1
  assert moments == 2 * len(params)


def test_dimension_that_does_not_divide_is_replicated(devices8, caplog):
  mesh = make_mesh((1, 8, 1))
  with caplog.at_level("INFO"):
    spec = shd.spec_for(("embed", "mlp"), (12, 64), mesh, what="odd/weight")
  assert spec == jax.sharding.PartitionSpec()
  assert "odd/weight" in caplog.text and "does not divide" in caplog.text


def test_lookup_tables_all_gather_only_where_batch_and_table_axes_collide():
  """Embedding tables: all-gather the fsdp-sharded model dim only when the batch is sharded over
  fsdp AND more (data × fsdp), where XLA would otherwise fully rematerialize the gather (launch.plan
  notes it)."""
  on = {"data": 2, "fsdp": 2, "tensor": 2}
  assert shd.lookup_axes(("vocab", "embed"), on) == ("vocab", None)
  assert shd.lookup_axes((None, "embed"), on) == (None, None)
  assert (
    shd.lookup_axes(("vocab", "embed"), {"data": 1, "fsdp": 8, "tensor": 1}) is None
  )  # FSDP only
  assert (
    shd.lookup_axes(("vocab", "embed"), {"data": 8, "fsdp": 1, "tensor": 1}) is None
  )  # no overlap
  assert (
    shd.lookup_axes(
      ("vocab", "embed"),
      {"data": 4, "fsdp": 2},
      rules=(("batch", "data"), ("vocab", None), ("embed", "fsdp")),
    )
    is None
  )
