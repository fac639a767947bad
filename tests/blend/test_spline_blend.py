"""SplineBlend (p1 §3.2), SplineBlend2D (p1 §4) and SimplexBlend: ranges, exact identities,
gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose.blend import SimplexBlend, SplineBlend, SplineBlend2D, bspline
from superpose.nn import sharding


def _grads(module, loss_fn):
  """Gradient of loss_fn(module()) with respect to every nnx.Param, as a pure dict."""
  graphdef, params = nnx.split(module, nnx.Param)

  def loss(p):
    return loss_fn(nnx.merge(graphdef, p)())

  return nnx.to_pure_dict(jax.grad(loss)(params))


def _axes(module):
  leaves = jax.tree.leaves(nnx.state(module), is_leaf=lambda v: isinstance(v, nnx.Variable))
  return [(v.get_metadata()["out_sharding"], v.shape) for v in leaves]


def test_spline_blend_init_range_and_identities():
  blend = SplineBlend(12, rngs=nnx.Rngs(0))
  control, bias = np.asarray(blend.control[...]), np.asarray(blend.bias[...])
  assert control.shape == (16,) and bias.shape == (12,)
  assert np.all((control >= 0.45) & (control <= 0.55)) and control.std() > 0.01
  np.testing.assert_array_equal(bias, 0.0)
  alpha = np.asarray(blend())
  assert alpha.shape == (12,) and np.all((alpha >= 0.45) & (alpha <= 0.55))

  blend.bias[...] = jnp.asarray(np.random.default_rng(0).normal(size=12), jnp.float32)
  alpha = np.asarray(blend())
  bias = np.asarray(blend.bias[...])
  np.testing.assert_allclose(alpha[0], control[0] + np.float32(0.1) * bias[0], rtol=0, atol=1e-7)
  np.testing.assert_allclose(alpha[11], control[15] + np.float32(0.1) * bias[11], rtol=0, atol=1e-7)
  expected = np.clip(bspline.layer_basis(12) @ control + 0.1 * bias, 0, 1)
  np.testing.assert_allclose(alpha, expected, atol=1e-6)


def test_spline_blend_clamps_and_gradients():
  blend = SplineBlend(12, rngs=nnx.Rngs(1))
  weights = jnp.asarray(np.random.default_rng(1).normal(size=12), jnp.float32)
  grads = _grads(blend, lambda alpha: jnp.sum(alpha * weights))
  np.testing.assert_allclose(
    grads["control"], bspline.layer_basis(12).T @ np.asarray(weights), atol=1e-5
  )
  np.testing.assert_allclose(grads["bias"], 0.1 * np.asarray(weights), atol=1e-6)

  blend.control[...] = jnp.full((16,), 3.0)
  np.testing.assert_array_equal(blend(), 1.0)
  grads = _grads(blend, lambda alpha: jnp.sum(alpha * weights))
  np.testing.assert_array_equal(grads["control"], 0.0)
  assert all(axes == ("control",) or axes == ("layers",) for axes, _ in _axes(blend))


def test_spline_blend_2d_range_and_init():
  blend = SplineBlend2D(12, 64, rngs=nnx.Rngs(2))
  assert blend.control[...].shape == (16, 64) and blend.bias[...].shape == (12, 64)
  assert abs(float(blend.control[...].std()) - 0.1) < 0.01
  assert abs(float(blend.bias[...].std()) - 1.0) < 0.1
  alpha = np.asarray(blend())
  assert alpha.shape == (12, 64) and np.all((alpha >= 0.1) & (alpha <= 1.0))
  expected = (
    1
    / (
      1
      + np.exp(
        -(
          bspline.layer_basis(12) @ np.asarray(blend.control[...])
          + 0.01 * np.asarray(blend.bias[...])
        )
      )
    )
    * 0.9
    + 0.1
  )
  np.testing.assert_allclose(alpha, expected, atol=1e-6)

  blend.control[...] = blend.control[...] * 1000.0  # saturate the sigmoid both ways
  alpha = np.asarray(blend())
  assert (
    np.all((alpha >= 0.1) & (alpha <= 1.0))
    and alpha.min() < 0.1 + 1e-6
    and alpha.max() > 1.0 - 1e-6
  )
  assert sorted(_axes(blend)) == [(("control", "embed"), (16, 64)), (("layers", "embed"), (12, 64))]


def test_spline_blend_2d_quantised_straight_through():
  plain = SplineBlend2D(12, 32, rngs=nnx.Rngs(3))
  quantised = SplineBlend2D(12, 32, quantize=True, rngs=nnx.Rngs(3))
  a, q = np.asarray(plain()), np.asarray(quantised())
  np.testing.assert_allclose(q * 10, np.round(q * 10), atol=1e-5)
  assert np.all(np.abs(q - a) <= 0.05 + 1e-6) and len(np.unique(np.round(q, 1))) > 1

  weights = jnp.asarray(np.random.default_rng(3).normal(size=(12, 32)), jnp.float32)
  loss = lambda alpha: jnp.sum(alpha * weights)  # noqa: E731
  g_plain, g_quantised = _grads(plain, loss), _grads(quantised, loss)
  for name in ("control", "bias"):
    assert np.abs(g_plain[name]).max() > 0
    np.testing.assert_allclose(g_quantised[name], g_plain[name], rtol=1e-6, atol=1e-9)


def test_simplex_blend():
  blend = SimplexBlend(12, 3, rngs=nnx.Rngs(4))
  weights = np.asarray(blend())
  assert weights.shape == (12, 3) and np.all(weights >= 0)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(weights, 1 / 3, atol=0.02)
  assert weights.std() > 0  # the noise breaks the symmetry between experts

  target = jnp.asarray(np.random.default_rng(4).normal(size=(12, 3)), jnp.float32)
  grads = _grads(blend, lambda w: jnp.sum(w * target))
  assert grads["control"].shape == (16, 3) and np.abs(grads["control"]).max() > 1e-3
  # Each row sums to 1, so the total is constant and its gradient vanishes.
  np.testing.assert_allclose(_grads(blend, jnp.sum)["control"], 0.0, atol=1e-6)

  blend.control[...] = blend.control[...].at[:, 0].set(50.0)
  np.testing.assert_allclose(blend()[:, 0], 1.0, atol=1e-6)
  assert _axes(blend) == [(("control", "experts"), (16, 3))]


def test_blends_hold_only_params_with_known_axes():
  rules = dict(sharding.DEFAULT_RULES)
  for module in (
    SplineBlend(6, num_control=5, rngs=nnx.Rngs(0)),
    SplineBlend2D(6, 8, rngs=nnx.Rngs(0)),
    SimplexBlend(6, 4, degree=2, rngs=nnx.Rngs(0)),
  ):
    _, _, rest = nnx.split(module, nnx.Param, ...)
    assert not jax.tree.leaves(rest)
    for axes, shape in _axes(module):
      assert len(axes) == len(shape) and all(a in rules for a in axes)
