"""The superposed model: forced α reproduces each expert, causality, frozen experts, config
checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpose import nn
from superpose.nn.testing import random_model
from superpose.train.losses import lm_loss
from projects.superposed_experts.model import Superposed, SuperposedConfig

EXPERT = nn.gpt2(
  vocab_size=61, d_model=32, num_layers=3, num_heads=4, d_ff=64, max_seq_len=16, vocab_multiple=8
)
B, T = 2, 16


def _model(cfg: SuperposedConfig, seeds=(0, 1)) -> Superposed:
  """A superposed model whose experts are independent numpy-drawn transformers (no PRNG
  compiles)."""
  model = Superposed(cfg, rngs=nnx.Rngs(0))
  for expert, seed in zip(model.experts, seeds):
    nnx.update(expert, nnx.state(random_model(cfg.expert, seed=seed, scale=0.2)))
  return model


def _tokens(seed=0, shape=(B, T)):
  return jnp.asarray(np.random.default_rng(seed).integers(0, EXPERT.vocab_size, shape), jnp.int32)


@pytest.fixture(scope="module")
def paper():
  """K = 2, 1-D α, causal conv AEs at blocks 0, 1 (+ 2, the post-final-norm state, in training)."""
  cfg = SuperposedConfig(expert=EXPERT, ae_layers=(0, 1), train_ae_layers=(0, 1, 2))
  model = _model(cfg)
  graphdef, state = nnx.split(model)
  forward = jax.jit(
    lambda s, t, a, ae: nnx.merge(graphdef, s)(t, alpha=a, use_autoencoders=ae), static_argnums=3
  )
  expert_forward = jax.jit(lambda s, t: nnx.merge(nnx.graphdef(model.experts[0]), s)(t).logits_BTV)
  return model, graphdef, state, forward, expert_forward


def test_forced_alpha_gives_each_expert(paper):
  model, _, state, forward, expert_forward = paper
  tokens = _tokens()
  L = EXPERT.num_layers
  for k, alphas in ((0, (0.0, np.zeros(L, np.float32))), (1, (1.0, np.ones(L, np.float32)))):
    want = expert_forward(nnx.state(model.experts[k]), tokens)
    for alpha in alphas:  # a scalar and an (L,) array, both traced: one compilation serves every α
      got = forward(state, tokens, jnp.asarray(alpha, jnp.float32), False)
      np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # With the autoencoders in the path, or α in between, the output is neither expert.
  mixed = forward(state, tokens, jnp.asarray(0.5), False)
  assert float(jnp.abs(mixed - expert_forward(nnx.state(model.experts[0]), tokens)).max()) > 1e-2
  with_ae = forward(state, tokens, jnp.asarray(0.0), True)
  assert float(jnp.abs(with_ae - expert_forward(nnx.state(model.experts[0]), tokens)).max()) > 1e-2


def test_causal_with_autoencoders(paper):
  model, graphdef, state, forward, _ = paper
  tokens = _tokens(1)
  changed = tokens.at[:, 9:].set((tokens[:, 9:] + 7) % EXPERT.vocab_size)
  a, b = forward(state, tokens, None, True), forward(state, changed, None, True)
  np.testing.assert_array_equal(a[:, :9], b[:, :9])
  assert float(jnp.abs(a[:, 9:] - b[:, 9:]).max()) > 1e-3
  train = jax.jit(lambda s, t: nnx.merge(graphdef, s).train_forward(t, jnp.array([0, 1]))[0])
  a, b = train(state, tokens), train(state, changed)
  np.testing.assert_array_equal(a[:, :9], b[:, :9])


def test_non_causal_autoencoder_leaks():
  """The notebook's symmetric padding: logits at t depend on token t + 1 (the leak of p1 §7.4)."""
  cfg = SuperposedConfig(expert=EXPERT, ae_layers=(1,), ae_causal=False)
  model = _model(cfg)
  tokens = _tokens(2)
  changed = tokens.at[:, 9].set((tokens[:, 9] + 7) % EXPERT.vocab_size)
  forward = nnx.jit(lambda m, t: m(t))
  a, b = forward(model, tokens), forward(model, changed)
  assert float(jnp.abs(a[:, 8] - b[:, 8]).max()) > 1e-4


@pytest.mark.parametrize("graph", ["sequential", "teacher_forced"])
def test_train_forward_trains_blend_and_autoencoders_only(paper, graph):
  import dataclasses

  model, graphdef, state, _, _ = paper
  graphdef = nnx.graphdef(
    Superposed(dataclasses.replace(model.cfg, train_graph=graph), rngs=nnx.Rngs(0))
  )
  params = nnx.state(nnx.merge(graphdef, state), nnx.Param)
  tokens = _tokens(3)
  targets = jnp.roll(tokens, -1, axis=1)
  weights = jnp.ones((B, T)).at[1, 10:].set(0.0)  # row 1 is padded after position 9

  def loss(p):
    logits, recon, aux = nnx.merge(graphdef, p).train_forward(
      tokens, jnp.array([0, 1]), mask_BT=weights
    )
    return lm_loss(logits, targets, weights)[0] + 3.0 * recon, aux

  grads, aux = jax.jit(jax.grad(loss, has_aux=True))(params)
  grads = nnx.to_pure_dict(grads)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["experts"]))
  assert float(jnp.abs(grads["blend"]["control"]).max()) > 0
  for layer in ("0", "1", "2"):
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["autoencoders"][layer]))
  assert set(k for k in aux if k.startswith("recon/")) == {"recon/0", "recon/1", "recon/2"}
  forward_dots = str(jax.make_jaxpr(lambda p: loss(p)[0])(params)).count("dot_general")
  backward_dots = (
    str(jax.make_jaxpr(jax.grad(lambda p: loss(p)[0]))(params)).count("dot_general") - forward_dots
  )
  # Teacher-forced: the experts' backward is not in the program at all. Sequential: it runs through
  # their activations (dx) but never computes their weight gradients (dW), which would double it.
  assert 0 < backward_dots < forward_dots


@pytest.mark.parametrize(
  "graph, ae_layers, train_ae_layers, live",
  [
    ("sequential", (), (), "all"),  # blend only: the LM loss reaches every layer's α
    ("sequential", (1,), (1, 2), "all"),
    ("teacher_forced", (), (), "last"),  # the notebook's graph: only the head's α is trained
    ("teacher_forced", (1,), (1, 2), "autoencoded"),
  ],
)
def test_every_alpha_gets_a_gradient(graph, ae_layers, train_ae_layers, live):
  """dL/dα_l per layer (through the per-layer bias b_l, α_l = spline + 0.1·b_l): in the sequential
  graph every layer's α is trained; the teacher-forced graph leaves the α of layers without an
  autoencoder untouched — the bug this graph choice fixes."""
  cfg = SuperposedConfig(
    expert=EXPERT, ae_layers=ae_layers, train_ae_layers=train_ae_layers, train_graph=graph
  )
  model = _model(cfg)
  graphdef, params = nnx.split(model, nnx.Param)
  tokens = _tokens(8)

  def loss(p):
    logits, recon, _ = nnx.merge(graphdef, p).train_forward(tokens, jnp.array([0, 1]))
    return lm_loss(logits[:, :-1], tokens[:, 1:], jnp.ones((B, T - 1)))[0] + 3.0 * recon

  g = np.abs(np.asarray(nnx.to_pure_dict(jax.jit(jax.grad(loss))(params))["blend"]["bias"]))
  L = EXPERT.num_layers
  want = {"all": set(range(L)), "last": {L - 1}, "autoencoded": set(train_ae_layers)}[live]
  assert set(np.flatnonzero(g > 0).tolist()) == want, g


def test_sequential_recon_of_a_training_only_autoencoder():
  """In the sequential graph an autoencoder outside ``ae_layers`` is a side branch: with two copies
  of one expert the blended last state is that expert's own, so recon = MSE(AE(own), own)."""
  L = EXPERT.num_layers
  cfg = SuperposedConfig(expert=EXPERT, ae_layers=(), train_ae_layers=(L - 1,))
  model = _model(cfg, seeds=(5, 5))
  tokens = _tokens(4)
  logits, recon, aux = nnx.jit(lambda m, t: m.train_forward(t, jnp.array([0, 1])))(model, tokens)
  own = model.experts[0](tokens).final_hidden_BTD
  want = jnp.mean(jnp.square(model.autoencoders[str(L - 1)](own) - own))
  np.testing.assert_allclose(recon, want, rtol=1e-5)
  np.testing.assert_allclose(
    logits, model.experts[0](tokens).logits_BTV, atol=1e-5
  )  # not fed forward


def test_teacher_forced_equals_sequential_for_equal_experts():
  """Blend-only with two copies of one expert: both graphs are that expert, HF convention
  included."""
  cfg = SuperposedConfig(expert=EXPERT, blend="1d")
  model = _model(cfg, seeds=(5, 5))
  tokens = _tokens(5)
  want, sequential, teacher_forced = nnx.jit(
    lambda m, t: (m.experts[0](t).logits_BTV, m(t), m.train_forward(t, jnp.array([0, 1]))[0])
  )(model, tokens)
  np.testing.assert_allclose(sequential, want, atol=1e-5)
  np.testing.assert_allclose(teacher_forced, want, atol=1e-5)


def test_three_experts_simplex_and_router():
  cfg = SuperposedConfig(expert=EXPERT, num_experts=3, ae_layers=(1,), router=True, router_layer=1)
  assert cfg.blend_kind == "simplex"
  model = _model(cfg, seeds=(0, 1, 2))
  forward = nnx.jit(lambda m, t, a: m(t, alpha=a))
  forced = nnx.jit(lambda m, t, a: m(t, alpha=a, use_autoencoders=False))
  expert = nnx.jit(lambda m, t: m(t).logits_BTV)
  tokens = _tokens(6)
  np.testing.assert_allclose(model.weights().sum(1), 1.0, atol=1e-6)
  for k in range(3):  # a forced one-hot weight bypasses the router and selects expert k
    np.testing.assert_allclose(
      forced(model, tokens, jnp.zeros(3).at[k].set(1.0)),
      expert(model.experts[k], tokens),
      atol=1e-5,
    )
  # The router's output layer starts at zero: routed = the learned static blend.
  static = model.weights()[..., 0]
  np.testing.assert_allclose(
    forward(model, tokens, None), forward(model, tokens, static), atol=1e-5
  )
  # Once trained it is input-dependent, and still causal (it reads a running mean over the prefix).
  model.router.w_out[...] = jnp.asarray(
    np.random.default_rng(0).normal(0, 1, model.router.w_out.shape), jnp.float32
  )
  changed = tokens.at[:, 9:].set((tokens[:, 9:] + 3) % EXPERT.vocab_size)
  a, b = forward(model, tokens, None), forward(model, changed, None)
  np.testing.assert_array_equal(a[:, :9], b[:, :9])
  assert float(jnp.abs(a - forward(model, tokens, static)).max()) > 1e-3
  logits, recon, _ = nnx.jit(lambda m, t: m.train_forward(t, jnp.array([2, 0])))(model, tokens)
  assert logits.shape == (B, T, EXPERT.padded_vocab) and np.isfinite(float(recon))


def test_2d_blend_forced_per_dimension():
  cfg = SuperposedConfig(expert=EXPERT, blend="2d", ae_layers=(1,))
  model = _model(cfg)
  assert model.alphas().shape == (EXPERT.num_layers, EXPERT.d_model)
  tokens = _tokens(7)
  alpha_LD = jnp.ones((EXPERT.num_layers, EXPERT.d_model))
  np.testing.assert_allclose(
    model(tokens, alpha=alpha_LD, use_autoencoders=False),
    model.experts[1](tokens).logits_BTV,
    atol=1e-5,
  )


@pytest.mark.parametrize(
  "changes, message",
  [
    (dict(ae_layers=(3,)), "block indices must lie in [0, 3)"),
    (dict(ae_layers=(1,), train_ae_layers=(2,)), "would never be trained"),
    (dict(num_experts=3, blend="2d"), "use 'simplex'"),
    (dict(router=True, blend="2d"), "router=True needs"),
    (dict(ae_decoder="mlp"), "ae_decoder='mlp'"),
    (dict(expert=EXPERT.replace(scan_layers=True)), "scan_layers=True"),
    (dict(num_control=16), "control points [1, 2, 3, 4, 5, 10, 11, 12, 13, 14] affect no layer"),
    (dict(train_graph="unrolled"), "train_graph='unrolled'"),
  ],
)
def test_config_errors(changes, message):
  with pytest.raises(
    ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
  ):
    SuperposedConfig(**{"expert": EXPERT, **changes})


def test_alpha_shapes_and_parameter_paths(paper):
  model = paper[0]
  L = EXPERT.num_layers
  assert model.weights(0.25).shape == (L, 2, 1)
  np.testing.assert_allclose(
    model.weights(jnp.full(L, 0.25))[:, :, 0], np.tile([0.75, 0.25], (L, 1))
  )
  with pytest.raises(ValueError, match="alpha of shape"):
    model.weights(jnp.zeros(L + 1))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert sorted(params) == ["autoencoders", "blend", "experts"]
  assert sorted(params["autoencoders"]) == ["0", "1", "2"] and sorted(params["experts"]) == [0, 1]


@pytest.mark.parametrize("blend", ["1d", "2d"])
def test_pallas_kernel_switch_equals_reference(blend):
  """config.kernel='pallas' (interpret mode on CPU) gives the reference's logits, reconstruction
  loss and gradients, in the inference graph (learned and forced α) and the teacher-forced training
  graph."""
  import dataclasses

  ref_cfg = SuperposedConfig(
    expert=EXPERT, ae_layers=(0, 1), train_ae_layers=(0, 1, 2), blend=blend
  )
  ref = _model(ref_cfg)
  graphdef, state = nnx.split(ref)
  fused = nnx.merge(
    nnx.graphdef(
      Superposed(
        dataclasses.replace(ref_cfg, kernel="pallas", kernel_block_rows=8), rngs=nnx.Rngs(0)
      )
    ),
    state,
  )
  tokens = _tokens(3)
  for alpha in (None, 0.3):
    np.testing.assert_allclose(
      fused(tokens, alpha=alpha), ref(tokens, alpha=alpha), atol=2e-5, rtol=0
    )

  def loss(model, s):
    logits, recon, _ = nnx.merge(nnx.graphdef(model), s).train_forward(tokens, jnp.array([0, 1]))
    return lm_loss(logits[:, :-1], tokens[:, 1:], jnp.ones((B, T - 1)))[0] + recon

  (l_ref, g_ref), (l_fused, g_fused) = (
    jax.value_and_grad(lambda s, m=m: loss(m, s))(state) for m in (ref, fused)
  )
  assert float(l_fused) == pytest.approx(float(l_ref), abs=1e-5)
  for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4)
  with pytest.raises(ValueError, match="kernel"):
    SuperposedConfig(expert=EXPERT, ae_layers=(0,), kernel="triton")
  with pytest.raises(ValueError, match="causal"):
    SuperposedConfig(expert=EXPERT, ae_layers=(0,), kernel="pallas", ae_causal=False)
