"""Building blocks and one full GPT-2 forward against independent numpy implementations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpose import nn
from superpose.nn import layers, mlp


def _norm_module(kind, d=16, use_bias=True, seed=0):
  cfg = nn.TransformerConfig(d_model=d, num_heads=2, norm=kind, use_bias=use_bias, norm_eps=1e-5)
  norm = layers.Norm(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(seed)
  if kind in ("layernorm", "rmsnorm"):
    norm.scale[...] = jnp.asarray(1 + 0.3 * rng.standard_normal(d), jnp.float32)
  if norm.bias is not None:
    norm.bias[...] = jnp.asarray(0.3 * rng.standard_normal(d), jnp.float32)
  return norm


def test_norms_match_numpy():
  x = np.random.default_rng(1).standard_normal((3, 5, 16)).astype(np.float32) * 2 + 0.5
  ln = _norm_module("layernorm")
  scale, bias = np.asarray(ln.scale[...]), np.asarray(ln.bias[...])
  ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * scale + bias
  np.testing.assert_allclose(ln(jnp.asarray(x)), ref, atol=1e-5)

  rms = _norm_module("rmsnorm")
  assert rms.bias is None
  ref = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5) * np.asarray(rms.scale[...])
  np.testing.assert_allclose(rms(jnp.asarray(x)), ref, atol=1e-5)

  l2 = _norm_module("l2")
  assert not nnx.state(l2, nnx.Param)  # no affine parameters
  ref = x / np.linalg.norm(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(l2(jnp.asarray(x)), ref, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(l2(jnp.asarray(x)), axis=-1), 1.0, atol=1e-6)
  assert np.all(np.isfinite(l2(jnp.zeros((2, 16)))))

  assert _norm_module("layernorm", use_bias=False).bias is None


def test_norm_statistics_in_f32_for_bf16_inputs():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 16)) * 100 + 1000, jnp.bfloat16)
  out = _norm_module("layernorm")(x)
  assert out.dtype == jnp.bfloat16
  ref = _norm_module("layernorm")(x.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.05)


def test_rope_matches_complex_rotation():
  rng = np.random.default_rng(3)
  b, t, h, d, theta = 2, 7, 3, 8, 500.0
  x = rng.standard_normal((b, t, h, d)).astype(np.float32)
  pos = rng.integers(0, 50, (b, t))
  out = np.asarray(layers.rope(jnp.asarray(x), jnp.asarray(pos), theta))
  # rotate-half: the complex number for frequency i is x[i] + 1j * x[i + d/2]
  z = x[..., : d // 2] + 1j * x[..., d // 2 :]
  freqs = theta ** (-np.arange(0, d, 2) / d)
  z = z * np.exp(1j * pos[:, :, None, None] * freqs)
  np.testing.assert_allclose(out, np.concatenate([z.real, z.imag], -1), atol=1e-5)
  # relative-position property: <rope(q, m), rope(k, n)> depends on m - n only
  q, k = rng.standard_normal((1, 1, 1, d)), rng.standard_normal((1, 1, 1, d))
  dot = lambda m, n: float(
    (
      layers.rope(jnp.asarray(q), jnp.array([[m]]), theta)
      * layers.rope(jnp.asarray(k), jnp.array([[n]]), theta)
    ).sum()
  )
  assert dot(9, 4) == pytest.approx(dot(25, 20), abs=1e-5)


def test_sinusoidal_table_matches_numpy():
  pos = np.arange(12)[None]
  d = 10
  ref = np.zeros((12, d))
  for p in range(12):
    for i in range(d // 2):
      ref[p, 2 * i] = math.sin(p / 10000 ** (2 * i / d))
      ref[p, 2 * i + 1] = math.cos(p / 10000 ** (2 * i / d))
  np.testing.assert_allclose(layers.sinusoidal(jnp.asarray(pos), d)[0], ref, atol=1e-5)


def test_sinusoidal_position_dims_fill_only_the_last_dimensions():
  cfg = nn.TransformerConfig(
    vocab_size=8,
    d_model=12,
    num_layers=1,
    num_heads=2,
    d_ff=8,
    max_seq_len=16,
    positions="sinusoidal",
    position_dims=4,
    vocab_multiple=8,
  )
  model = nn.Transformer(cfg, rngs=nnx.Rngs(0))
  tokens = jnp.array([[1, 2, 3, 4, 5]])
  x = np.asarray(model.embed(tokens))
  table = np.asarray(model.token_embedding[...])[np.asarray(tokens[0])]
  np.testing.assert_allclose(x[0, :, :8], table[:, :8], atol=1e-6)  # content untouched
  np.testing.assert_allclose(
    x[0, :, 8:] - table[:, 8:], layers.sinusoidal(jnp.arange(5)[None], 4)[0], atol=1e-6
  )
  with pytest.raises(ValueError, match="position_dims"):
    nn.TransformerConfig(d_model=12, num_heads=2, positions="sinusoidal", position_dims=14)
  with pytest.raises(ValueError, match="position_dims"):
    nn.TransformerConfig(d_model=12, num_heads=2, positions="learned", position_dims=4)


def test_activations():
  x = jnp.array([-2.0, -0.1, 0.0, 0.3, 0.5, 2.0])
  xs = np.asarray(x, np.float64)
  np.testing.assert_allclose(mlp.activate(x, "relu"), np.maximum(xs, 0))
  from math import erf

  np.testing.assert_allclose(
    mlp.activate(x, "gelu"), [0.5 * v * (1 + erf(v / 2**0.5)) for v in xs], atol=1e-6
  )
  tanh = 0.5 * xs * (1 + np.tanh(np.sqrt(2 / np.pi) * (xs + 0.044715 * xs**3)))
  np.testing.assert_allclose(mlp.activate(x, "gelu_tanh"), tanh, atol=1e-6)
  np.testing.assert_array_equal(
    mlp.activate(x, "step", 0.3), [0, 0, 0, 0, 1, 1]
  )  # strict: 0.3 -> 0
  np.testing.assert_array_equal(mlp.activate(x, "step"), [0, 0, 0, 1, 1, 1])


def test_gelu_tanh_derivative_matches_float64_finite_differences():
  x = np.linspace(-6, 6, 241)
  grad = jax.vmap(jax.grad(lambda v: mlp.activate(v, "gelu_tanh")))(jnp.asarray(x, jnp.float32))
  f = lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))
  np.testing.assert_allclose(grad, (f(x + 1e-6) - f(x - 1e-6)) / 2e-6, atol=1e-5)  # f32 rounding
  autodiff = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=True)))(jnp.asarray(x, "f4"))
  np.testing.assert_allclose(grad, autodiff, atol=2e-6)
  # the forward of the differentiated function is jax.nn.gelu's, bit for bit
  xs = jax.random.normal(jax.random.key(0), (4096,), jnp.float32) * 4
  primal = jax.jit(lambda v: jax.jvp(mlp.gelu_tanh, (v,), (jnp.ones_like(v),))[0])(xs)
  np.testing.assert_array_equal(primal, jax.jit(lambda v: jax.nn.gelu(v, approximate=True))(xs))


@pytest.mark.parametrize(
  "equation, x_shape, w_shape",
  [
    ("btd,df->btf", (2, 3, 4), (4, 5)),
    ("btd,dhk->bthk", (2, 3, 4), (4, 2, 3)),
    ("bthk,hkd->btd", (2, 3, 2, 3), (2, 3, 4)),
    ("btd,vd->btv", (2, 3, 4), (6, 4)),
  ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_projection_gradients_equal_autodiff_of_einsum(equation, x_shape, w_shape, dtype):
  kx, kw = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, x_shape).astype(dtype)
  w = jax.random.normal(kw, w_shape).astype(dtype)

  def loss(f):
    return lambda x, w: jnp.sin(f(x, w).astype(jnp.float32)).sum()

  ours = lambda x, w: layers.einsum(equation, x, w, dtype)
  plain = lambda x, w: jnp.einsum(equation, x, w, preferred_element_type=jnp.float32).astype(dtype)
  got, want = jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(plain), (0, 1))(x, w)
  for g, r in zip(got, want):
    assert g.dtype == r.dtype == dtype
    np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(r, np.float32))
  # under remat (the blocks' jax.checkpoint policies) too
  remat = jax.grad(jax.checkpoint(loss(ours), policy=jax.checkpoint_policies.checkpoint_dots))
  np.testing.assert_array_equal(remat(x, w), got[0])


def test_projection_runs_matmuls_over_merged_token_dimensions():
  """Forward, dx and dw of ``btd,df->btf`` are 2-D matmuls over b·t (one contracting dimension for
  the weight gradient): XLA:CPU writes an operand transposed for a contraction over (b, t)."""
  x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
  loss = lambda x, w: layers.projection("btd,df->btf", x, w).sum()

  def dots_in(jaxpr):  # the forward's dot sits inside the custom_vjp call's jaxpr
    for e in jaxpr.eqns:
      if e.primitive.name == "dot_general":
        yield e
      for sub in e.params.values():
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from dots_in(inner)

  dots = list(dots_in(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w).jaxpr))
  assert len(dots) == 3
  for e in dots:
    (contract, _), (batch, _) = e.params["dimension_numbers"]
    assert [v.aval.ndim for v in e.invars] == [2, 2] and len(contract) == 1 and not batch
  # equations without a shared leading run are left as written
  out = layers.projection("bthk,hkd->btd", jnp.ones((2, 3, 2, 4)), jnp.ones((2, 4, 5)))
  np.testing.assert_array_equal(out, jnp.full((2, 3, 5), 8.0))


def test_projection_traces_only_the_gradients_it_needs():
  x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
  loss = lambda x, w: layers.projection("btd,df->btf", x, w).sum()
  dots = lambda f: str(jax.make_jaxpr(f)(x, w)).count("dot_general")
  assert dots(jax.grad(loss, (0, 1))) == 3  # forward, dx, dw
  assert dots(jax.grad(lambda x, w: loss(x, jax.lax.stop_gradient(w)))) == 2  # no dw
  assert dots(jax.grad(loss, 1)) == 2  # no dx
  np.testing.assert_array_equal(jax.grad(loss, 1)(x, w), jnp.full((4, 5), 6.0))


@pytest.mark.parametrize("equation", ["...d,df->...f", "bd,df", "bdd,df->bf", "bd,df->b"])
def test_projection_refuses_equations_without_an_einsum_gradient(equation):
  with pytest.raises(ValueError, match="projection"):
    layers.projection(equation, jnp.ones((2, 4)), jnp.ones((4, 5)))


# --- full GPT-2 forward in numpy ------------------------------------------------------------------
def _np_layernorm(x, g, b):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * g + b


def _np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _np_gpt2(p, tokens, cfg):
  """GPT-2 written out with the HF layout (c_attn / c_proj matrices), float64."""
  t = tokens.shape[1]
  x = p["token_embedding"][tokens] + p["position_embedding"][:t]
  d, h = cfg.d_model, cfg.num_heads
  dh = d // h
  for blk in p["blocks"].values():
    a = _np_layernorm(x, blk["attn_norm"]["scale"], blk["attn_norm"]["bias"])
    att = blk["attn"]
    c_attn = np.concatenate([att[n].reshape(d, d) for n in "qkv"], 1)
    c_attn_b = np.concatenate([att[n + "_bias"].reshape(d) for n in "qkv"])
    qkv = a @ c_attn + c_attn_b
    q, k, v = (m.reshape(*m.shape[:2], h, dh).transpose(0, 2, 1, 3) for m in np.split(qkv, 3, -1))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    y = (w @ v).transpose(0, 2, 1, 3).reshape(*x.shape)
    x = x + y @ att["o"].reshape(d, d) + att["o_bias"]
    m = _np_layernorm(x, blk["mlp_norm"]["scale"], blk["mlp_norm"]["bias"])
    x = (
      x
      + _np_gelu_tanh(m @ blk["mlp"]["wi"] + blk["mlp"]["wi_bias"]) @ blk["mlp"]["wo"]
      + blk["mlp"]["wo_bias"]
    )
  x = _np_layernorm(x, p["final_norm"]["scale"], p["final_norm"]["bias"])
  return x @ p["token_embedding"].T


def test_gpt2_forward_matches_numpy():
  cfg = nn.gpt2(vocab_size=70, d_model=32, num_layers=2, num_heads=4, max_seq_len=16)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(
    1
  )  # numpy weights: no per-shape PRNG compiles, and biases/affines non-trivial
  state = jax.tree.map(
    lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape) + (a.shape == (32,)), a.dtype),
    abstract,
  )
  model = nnx.merge(graphdef, state)
  tokens = np.random.default_rng(0).integers(0, 70, (2, 11))
  logits = nnx.jit(lambda m, t: m(t).logits_BTV)(model, jnp.asarray(tokens))
  params = jax.tree.map(
    lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(model, nnx.Param))
  )
  ref = _np_gpt2(params, tokens, cfg)[..., :70]
  assert logits.shape == (2, 11, 128)
  np.testing.assert_array_less(np.abs(np.asarray(logits[..., :70]) - ref).max(), 1e-4)
  assert np.all(np.asarray(logits[..., 70:]) <= -1e8)
