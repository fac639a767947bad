import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from superpose.train import optim


def _params():
  k = jax.random.split(jax.random.key(0), 3)
  return {
    "blocks": {"w": jax.random.normal(k[0], (4, 4)), "b": jnp.zeros(4)},
    "blend": {"alpha": jax.random.normal(k[1], (3, 4))},
    "embed": jax.random.normal(k[2], (5, 4)),
  }


def _grads(p):
  return jax.tree.map(lambda x: jnp.full_like(x, 10.0), p)


@pytest.mark.parametrize("kind", ["constant", "warmup_cosine", "wsd"])
def test_schedules(kind):
  s = optim.schedule(kind, 1.0, total_steps=100, warmup_steps=10, decay_fraction=0.2, min_ratio=0.1)
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(float(s(10)), 1.0, rtol=1e-6)
  if kind == "constant":
    assert float(s(99)) == 1.0
  if kind == "wsd":
    np.testing.assert_allclose(float(s(79)), 1.0, rtol=1e-6)  # stable until the last 20%
    np.testing.assert_allclose(float(s(100)), 0.1, rtol=1e-6)
    assert 0.1 < float(s(90)) < 1.0
  if kind == "warmup_cosine":
    np.testing.assert_allclose(float(s(100)), 0.1, rtol=1e-5)
    np.testing.assert_allclose(
      float(s(55)), 0.1 + 0.9 * 0.5, rtol=1e-4
    )  # half-way through the cosine


def test_frozen_params_do_not_move_and_have_no_state():
  p = _params()
  tx, _ = optim.make_optimizer(
    {"lr": 0.1, "schedule": "constant", "frozen": ("embed", "blocks/.*")}, p, 10
  )
  st = tx.init(p)
  upd, st = tx.update(_grads(p), st, p)
  new = optax.apply_updates(p, upd)
  np.testing.assert_array_equal(new["embed"], p["embed"])
  np.testing.assert_array_equal(new["blocks"]["w"], p["blocks"]["w"])
  assert not np.allclose(new["blend"]["alpha"], p["blend"]["alpha"])
  # Adam moments exist for the trainable group only (scalars are step counters).
  n_moments = sum(x.size for x in jax.tree.leaves(st) if x.ndim)
  assert n_moments == 2 * p["blend"]["alpha"].size


def test_group_learning_rates_and_clipping():
  p = _params()
  cfg = {
    "lr": 0.0,
    "schedule": "constant",
    "weight_decay": 0.0,
    "groups": ({"pattern": "blend/.*", "lr": 1e-2, "clip_norm": 1.0},),
  }
  tx, _ = optim.make_optimizer(cfg, p, 10)
  upd, _ = tx.update(_grads(p), tx.init(p), p)
  # default group has lr 0: no update; group lr 1e-2, Adam's first step moves every entry by ≈ lr.
  assert float(jnp.abs(upd["blocks"]["w"]).max()) == 0.0
  np.testing.assert_allclose(np.abs(np.asarray(upd["blend"]["alpha"])), 1e-2, rtol=1e-3)


def test_global_clipping_excludes_frozen():
  # With a large eps Adam's first update is lr·g/(|g| + eps), so it shows the clipped gradient
  # scale.
  p = {"a": jnp.zeros(4), "f": jnp.zeros(4)}
  g = {"a": jnp.full(4, 3.0), "f": jnp.full(4, 1e6)}
  cfg = {
    "lr": 1.0,
    "schedule": "constant",
    "clip_norm": 1.0,
    "frozen": ("f",),
    "eps": 1.0,
    "weight_decay": 0.0,
  }
  tx, _ = optim.make_optimizer(cfg, p, 10)
  upd, _ = tx.update(g, tx.init(p), p)
  # ‖g_a‖ = 6 is clipped to 1 → each entry 0.5 → update −0.5/1.5. Had the frozen gradient counted,
  # the entries would have been scaled to ~1e-6.
  np.testing.assert_allclose(np.asarray(upd["a"]), -1 / 3, rtol=1e-5)
  assert float(jnp.abs(upd["f"]).max()) == 0.0


def test_bad_optimizer_config():
  p = _params()
  with pytest.raises(ValueError, match="unknown key 'lrr'"):
    optim.make_optimizer({"lr": 1.0, "lrr": 2.0}, p, 10)
  with pytest.raises(ValueError, match="matches no parameter"):
    optim.make_optimizer({"lr": 1.0, "groups": ({"pattern": "nothing"},)}, p, 10)
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.make_optimizer({"lr": 1.0, "schedule": "linear"}, p, 10)
