"""Superposed experts (p1 §3): E frozen transformers whose hidden states are blended layer by layer.

Two graphs over the same parameters:

* ``__call__`` — the sequential inference graph of p1 §3.5 (Algorithm 1 unrolled). Per layer every
  expert's block reads the same input, their outputs are blended, autoencoded at ``ae_layers`` and
  fed to the next layer.
* ``train_forward`` — what training differentiates, chosen by ``train_graph``:
  - ``'sequential'`` (default): the inference graph itself, with the experts' parameters under
    ``stop_gradient`` (frozen; gradients still flow through their activations), so the LM loss
    reaches the blend weight of EVERY layer and the model trained is the model evaluated. Each
    autoencoded state is also pulled towards the state the row's labelled expert reaches when it
    runs alone.
  - ``'teacher_forced'``: the notebook's graph of p1 §3.4. Every expert runs end-to-end on the raw
    input under ``stop_gradient``; their states are blended per layer and autoencoded at
    ``train_ae_layers`` independently of each other. Blended states reach the loss only through a
    reconstruction term, so the α of a layer without an autoencoder — and of every layer but the
    last in a blend-only run — receives no gradient at all (measured:
    ``tests/projects/superposed_experts/test_sx_gradients.py``). Kept for the faithful reproduction
    only.

States follow Hugging Face's ``hidden_states`` convention (p1 §7.1): state 0 is the embedding
(blended with the mean over layers of the blend weights), state l + 1 the output of block l, and the
last state is taken *after* each expert's final norm. The final norm is therefore part of the last
layer in both graphs: each expert normalises its own last-block output before the blend, and the
unembedding reads the blended (or reconstructed) normalised state directly. (The notebook instead
blends post-norm states in training but applies the base model's norm to a blended pre-norm state at
inference.) The unembedding is blended with the last layer's weights — logits are linear in the
table, so this is the blend of the experts' own heads on one state — which makes α = 0 / 1 reproduce
the base / expert exactly when the autoencoders are bypassed.

Blend weights are held as W (L, E, X): layer, expert, and X = 1 (one weight per layer) or X = D
(the 2-D model, one per hidden dimension); rows sum to one over E.

Router (``router=True``, beyond the paper; p1 §8 asks for input-dependent switching): a small MLP
reads the residual state that enters block ``router_layer`` — for the default 0, the blended
embedding, which is the same in both graphs — as [rms(s_t), mean_{τ≤t} rms(s_τ)]: the token and a
causal running summary of the prefix, so it can tell the domain from the context seen so far without
looking ahead. It outputs per-token logit offsets r (B, T, L, E) and the routed weights are
softmax_E(log W + r) for layers ≥ ``router_layer`` and the head (earlier layers have already run).
The output layer starts at zero, so training starts from exactly the learned static blend. The
running mean crosses packed-document boundaries: use it on one document per row.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose.blend import Autoencoder, SimplexBlend, SplineBlend, SplineBlend2D, layer_basis
from superpose import kernels as kernel_lib
from superpose.nn import sharding
from superpose.nn import cache as cache_lib
from superpose.nn.block import RESIDUAL_AXES
from superpose.nn.config import TransformerConfig
from superpose.nn.decoder import VOCAB_PAD_LOGIT, Transformer, default_positions
from superpose.train import state as state_lib

BLENDS = ("1d", "2d", "simplex")
TRAIN_GRAPHS = ("sequential", "teacher_forced")
EMBED_BLENDS = ("mean", "base")
KERNELS = kernel_lib.IMPLS
_LOG_FLOOR = 1e-6  # log of a zero blend weight (a clamped α) for the router's logit space


@dataclasses.dataclass(frozen=True)
class SuperposedConfig:
  expert: TransformerConfig  # every expert has this architecture (one vocabulary)
  num_experts: int = 2  # E; E = 2 is the paper (expert 0 = base, 1 = fine-tuned)
  ae_layers: tuple[
    int, ...
  ] = ()  # 0-based block indices whose blended output is autoencoded (inference)
  train_ae_layers: tuple[int, ...] | None = (
    None  # trained AEs (paper: one more, the post-final-norm state); None = ae_layers
  )
  bottleneck: int = 0  # 0 = int(0.75 · d_model)
  ae_decoder: str = "conv"  # 'conv' (Conv1d over T, the paper's) | 'linear'
  ae_kernel: int = 3
  ae_causal: bool = True  # False = the paper's symmetric padding (leaks token t+1)
  blend: str = "1d"  # '1d' (SplineBlend) | '2d' (SplineBlend2D) | 'simplex' (E ≥ 3 forces it)
  num_control: int = (
    0  # 0 = min(16, L) (and degree ≤ L − 1): the paper's 16 at L = 12, none dead at small L
  )
  degree: int = 3
  blend_init: tuple[float, float] = (0.45, 0.55)  # 1-D control-point init range
  bias_scale: float = 0.0  # 0 = the blend's own default (1-D 0.1, 2-D 0.01)
  quantize: bool = False  # 2-D: round α to 0.1 steps with a straight-through gradient
  embed_blend: str = "mean"  # 'mean' (1-D notebook: mean α over layers) | 'base' (Bench notebook)
  router: bool = False  # input-dependent weights (module docstring)
  router_layer: int = 0
  router_hidden: int = 64
  kernel: str = (
    "reference"  # 'reference' | 'pallas': the fused blend + autoencoder step (2 experts)
  )
  kernel_block_rows: int = 128
  train_graph: str = (
    "sequential"  # 'sequential' (every α gets a gradient) | 'teacher_forced' (the notebook's)
  )

  def __post_init__(self):
    for name in ("ae_layers", "train_ae_layers", "blend_init"):
      value = getattr(self, name)
      if isinstance(value, list):
        object.__setattr__(self, name, tuple(value))
    errors = []
    L = self.expert.num_layers
    if not (isinstance(self.num_experts, int) and self.num_experts >= 2):
      errors.append(f"num_experts={self.num_experts!r}: need at least 2 experts")
    if self.blend not in BLENDS:
      errors.append(f"blend={self.blend!r}: must be one of {', '.join(BLENDS)}")
    elif self.blend == "2d" and self.num_experts > 2:
      errors.append(
        f"blend='2d' blends two experts; with num_experts={self.num_experts} use 'simplex'"
      )
    for name in ("ae_layers", "train_ae_layers"):
      bad = [l for l in (getattr(self, name) or ()) if not (isinstance(l, int) and 0 <= l < L)]
      if bad:
        errors.append(f"{name}={getattr(self, name)}: block indices must lie in [0, {L})")
    missing = sorted(set(self.ae_layers) - set(self.trained_ae_layers))
    if missing:
      errors.append(
        f"ae_layers {missing} are not in train_ae_layers={self.train_ae_layers}: they would never "
        "be trained"
      )
    if self.bottleneck < 0:
      errors.append(f"bottleneck={self.bottleneck}: must be ≥ 0 (0 = 0.75·d_model)")
    if self.ae_decoder not in ("conv", "linear"):
      errors.append(f"ae_decoder={self.ae_decoder!r}: must be 'conv' or 'linear'")
    if self.ae_kernel < 1 or (
      self.ae_decoder == "conv" and not self.ae_causal and self.ae_kernel % 2 == 0
    ):
      errors.append(f"ae_kernel={self.ae_kernel}: must be ≥ 1 (and odd for a non-causal conv)")
    if self.control_points < self.spline_degree + 1:
      errors.append(
        f"num_control={self.num_control}: a degree-{self.degree} spline needs ≥ {self.degree + 1}"
      )
    else:
      dead = np.flatnonzero(
        np.abs(layer_basis(L, self.control_points, self.spline_degree)).sum(0) == 0
      )
      if len(dead):
        errors.append(
          f"num_control={self.num_control} with {L} layers: control points {dead.tolist()} affect "
          "no "
          f"layer's weight, so they could never train; use 0 (automatic)"
        )
    if self.train_graph not in TRAIN_GRAPHS:
      errors.append(f"train_graph={self.train_graph!r}: must be one of {', '.join(TRAIN_GRAPHS)}")
    if self.embed_blend not in EMBED_BLENDS:
      errors.append(f"embed_blend={self.embed_blend!r}: must be one of {', '.join(EMBED_BLENDS)}")
    if self.router:
      if self.blend_kind == "2d":
        errors.append(
          "router=True needs one weight per layer and expert (blend '1d' or 'simplex', not '2d')"
        )
      if not 0 <= self.router_layer < L:
        errors.append(f"router_layer={self.router_layer}: must lie in [0, {L})")
      if self.router_hidden < 1:
        errors.append(f"router_hidden={self.router_hidden}: must be ≥ 1")
    if self.kernel not in KERNELS:
      errors.append(f"kernel={self.kernel!r}: must be one of {', '.join(KERNELS)}")
    elif (
      self.kernel == "pallas"
      and self.ae_decoder == "conv"
      and not self.ae_causal
      and self.ae_kernel > 1
    ):
      errors.append("kernel='pallas' fuses the causal conv decoder only (ae_causal=False)")
    if self.expert.scan_layers:
      errors.append(
        "expert.scan_layers=True: the inference graph steps through the blocks one by one; "
        "use the looped layout (superpose.nn.unstack_layers converts checkpoints)"
      )
    if errors:
      raise ValueError("invalid superposed config:\n  " + "\n  ".join(errors))

  @property
  def trained_ae_layers(self) -> tuple[int, ...]:
    return tuple(self.ae_layers if self.train_ae_layers is None else self.train_ae_layers)

  @property
  def control_points(self) -> int:
    return self.num_control or min(16, self.expert.num_layers)

  @property
  def spline_degree(self) -> int:
    """``degree``, lowered to control_points − 1 when the number of control points is automatic."""
    return self.degree if self.num_control else min(self.degree, self.control_points - 1)

  @property
  def bottleneck_size(self) -> int:
    return self.bottleneck or int(0.75 * self.expert.d_model)

  @property
  def blend_kind(self) -> str:
    return "simplex" if self.num_experts > 2 else self.blend

  @classmethod
  def from_dict(cls, expert: TransformerConfig, values: Mapping[str, Any]) -> "SuperposedConfig":
    """From a config section; keys that are not fields (data, loss weights, paths) are ignored."""
    names = {f.name for f in dataclasses.fields(cls)} - {"expert"}
    kwargs = {
      k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(values).items() if k in names
    }
    return cls(expert=expert, **kwargs)


class Router(nnx.Module):
  """Per-token logit offsets (B, T, L, E) from a residual state and its causal running mean."""

  def __init__(
    self, d_model: int, num_layers: int, num_experts: int, hidden: int, *, rngs: nnx.Rngs
  ):
    self.num_layers, self.num_experts = num_layers, num_experts
    self.w_in = sharding.param(
      rngs, nnx.initializers.lecun_normal(), (2 * d_model, hidden), (None, None)
    )
    self.b_in = sharding.param(rngs, nnx.initializers.zeros, (hidden,), (None,))
    # Zero output layer: the routed weights start equal to the static blend.
    self.w_out = sharding.param(
      rngs, nnx.initializers.zeros, (hidden, num_layers * num_experts), (None, None)
    )
    self.b_out = sharding.param(rngs, nnx.initializers.zeros, (num_layers * num_experts,), (None,))

  def __call__(self, s_BTD: jax.Array) -> jax.Array:
    x = s_BTD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(
      jnp.square(x).mean(-1, keepdims=True) + 1e-6
    )  # GPT-2 states reach norms of 1e3
    prefix = jnp.cumsum(x, axis=1) / jnp.arange(1, x.shape[1] + 1, dtype=jnp.float32)[None, :, None]
    h = jax.nn.gelu(jnp.concatenate([x, prefix], -1) @ self.w_in[...] + self.b_in[...])
    r = h @ self.w_out[...] + self.b_out[...]
    return r.reshape(*r.shape[:2], self.num_layers, self.num_experts)


class Superposed(nnx.Module):
  """Parameters: ``experts/<k>/...`` (superpose.nn.Transformer), ``blend/...``,
  ``autoencoders/<layer>/...`` and, with ``router``, ``router/...``."""

  def __init__(self, cfg: SuperposedConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    e, L, E = cfg.expert, cfg.expert.num_layers, cfg.num_experts
    self.experts = nnx.List([Transformer(e, rngs=rngs) for _ in range(E)])
    scale = {"bias_scale": cfg.bias_scale} if cfg.bias_scale else {}
    if cfg.blend_kind == "1d":
      self.blend = SplineBlend(
        L,
        num_control=cfg.control_points,
        degree=cfg.spline_degree,
        init_range=cfg.blend_init,
        rngs=rngs,
        **scale,
      )
    elif cfg.blend_kind == "2d":
      self.blend = SplineBlend2D(
        L,
        e.d_model,
        num_control=cfg.control_points,
        degree=cfg.spline_degree,
        quantize=cfg.quantize,
        rngs=rngs,
        **scale,
      )
    else:
      self.blend = SimplexBlend(
        L, E, num_control=cfg.control_points, degree=cfg.spline_degree, rngs=rngs
      )
    self.autoencoders = nnx.Dict(
      {
        str(l): Autoencoder(
          e.d_model,
          cfg.bottleneck_size,
          decoder=cfg.ae_decoder,
          kernel_size=cfg.ae_kernel,
          causal=cfg.ae_causal,
          rngs=rngs,
        )
        for l in sorted(set(cfg.trained_ae_layers) | set(cfg.ae_layers))
      }
    )
    # Offsets only for the layers the router can still change (≥ router_layer): no output is dead.
    self.router = (
      Router(e.d_model, L - cfg.router_layer, E, cfg.router_hidden, rngs=rngs)
      if cfg.router
      else None
    )

  # Blend weights ---------------------------------------------------------------------------------
  def alphas(self) -> jax.Array:
    """The learned blend: α (L,) for '1d', α (L, D) for '2d' (weight of expert 1), weights (L, E)
    for 'simplex'."""
    return self.blend()

  def weights(self, alpha=None) -> jax.Array:
    """Blend weights W (L, E, X), X ∈ {1, D}, learned (``alpha=None``) or forced (see
    ``__call__``)."""
    cfg = self.cfg
    L, E = cfg.expert.num_layers, cfg.num_experts
    if alpha is None:
      a = self.blend().astype(jnp.float32)
      if cfg.blend_kind == "simplex":
        return a[..., None]
      w = jnp.stack([1.0 - a, a], axis=1)  # (L, 2) or (L, 2, D)
      return w[..., None] if a.ndim == 1 else w
    a = jnp.asarray(alpha, jnp.float32)
    if E == 2 and a.ndim <= 1 and a.shape in ((), (L,)):
      a = jnp.broadcast_to(a, (L,))
      return jnp.stack([1.0 - a, a], axis=1)[..., None]
    if E == 2 and a.shape == (L, cfg.expert.d_model) and a.shape != (L, E):
      return jnp.stack([1.0 - a, a], axis=1)
    if a.shape in ((E,), (L, E)):
      return jnp.broadcast_to(a, (L, E))[..., None]
    raise ValueError(
      f"alpha of shape {a.shape}: expected a scalar or ({L},) α for 2 experts, or a ({E},) / "
      f"({L}, {E}) weight array"
    )

  def _embed_weights(self, w_LEX: jax.Array) -> jax.Array:
    if self.cfg.embed_blend == "base":
      return jnp.zeros_like(w_LEX[0]).at[0].set(1.0)
    return w_LEX.mean(0)

  def _route(self, w_LEX: jax.Array, s_BTD: jax.Array) -> jax.Array:
    """Per-token weights (B, T, L − router_layer, E, 1) = softmax_E(log W + router offsets) of the
    layers from ``router_layer`` on."""
    w = w_LEX[self.cfg.router_layer :, :, 0]
    logits = jnp.log(jnp.maximum(w, _LOG_FLOOR)) + self.router(s_BTD)
    return jax.nn.softmax(logits, axis=-1)[..., None]

  # Pieces ----------------------------------------------------------------------------------------
  @staticmethod
  def _mix(w_EX: jax.Array, states) -> jax.Array:
    """Σ_k w_k ⊙ h_k; w is (E, X) or per token (B, T, E, X)."""
    out = sum(w_EX[..., k, :] * h.astype(jnp.float32) for k, h in enumerate(states))
    return sharding.constrain(out.astype(states[0].dtype), RESIDUAL_AXES)

  def _alpha_form(self, alpha) -> bool:
    """Whether the weights are (1 − α, α) of two experts (what the fused kernel computes)."""
    cfg = self.cfg
    if cfg.num_experts != 2 or cfg.blend_kind == "simplex":
      return False
    L, D = cfg.expert.num_layers, cfg.expert.d_model
    return alpha is None or jnp.shape(alpha) in ((), (L,), (L, D))

  def _blend_step(self, l: int, w_EX: jax.Array, states, *, encode: bool, fused: bool) -> jax.Array:
    """The blended state of layer l, autoencoded when ``encode``; with ``cfg.kernel == 'pallas'``
    and ``fused`` (two experts, weights (1 − α, α)) one fused kernel does both."""
    if encode and fused and self.cfg.kernel == "pallas":
      a = w_EX[1]
      a = a[0] if a.shape == (1,) else a
      params = kernel_lib.autoencoder_params(self.autoencoders[str(l)])
      return kernel_lib.superpose_step(
        states[0],
        states[1],
        a,
        **params,
        impl="pallas",
        config=kernel_lib.KernelConfig(block_rows=self.cfg.kernel_block_rows),
      )
    state = self._mix(w_EX, states)
    return self.autoencoders[str(l)](state) if encode else state

  def _unembed(self, h_BTD: jax.Array, w_EX: jax.Array, frozen: bool) -> jax.Array:
    """Logits of the blended head: Σ_k h · (w_k ⊙ E_k)ᵀ, with the padded vocabulary ids masked."""
    e = self.cfg.expert
    dtype = e.compute_dtype
    tables = [
      x.token_embedding[...] if e.tie_embeddings else x.unembedding[...].T for x in self.experts
    ]
    if frozen:
      tables = [jax.lax.stop_gradient(t) for t in tables]
    if w_EX.ndim == 2:  # one table: the cost of a single head
      table = sum(w_EX[k][None, :] * t.astype(jnp.float32) for k, t in enumerate(tables))
      logits = jnp.einsum(
        "btd,vd->btv", h_BTD.astype(dtype), table.astype(dtype), preferred_element_type=jnp.float32
      )
    else:  # per-token weights: contract over (expert, dim) in one matmul
      x_BTED = (w_EX * h_BTD.astype(jnp.float32)[:, :, None, :]).astype(dtype)
      logits = jnp.einsum(
        "btkd,kvd->btv", x_BTED, jnp.stack(tables).astype(dtype), preferred_element_type=jnp.float32
      )
    if e.padded_vocab > e.vocab_size:
      logits = jnp.where(jnp.arange(e.padded_vocab) < e.vocab_size, logits, VOCAB_PAD_LOGIT)
    return sharding.constrain(logits, ("batch", "length", "act_vocab"))

  def _positions(self, tokens_BT, positions_BT):
    return default_positions(*tokens_BT.shape) if positions_BT is None else positions_BT

  # Teacher-forced training graph (p1 §3.4) --------------------------------------------------------
  def expert_states(self, tokens_BT, *, positions_BT=None, segment_ids_BT=None) -> jax.Array:
    """(E, L + 1, B, T, D): every expert run alone, HF convention (last state after its final
    norm)."""
    positions_BT = self._positions(tokens_BT, positions_BT)
    out = []
    for expert in self.experts:
      x = expert.embed(tokens_BT, positions_BT)
      last, hidden, _, _ = expert.run_blocks(
        x, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT, return_hidden=True
      )
      out.append(jnp.concatenate([hidden[:-1], expert.apply_final_norm(last)[None]], axis=0))
    return jnp.stack(out)

  def train_forward(
    self, tokens_BT, labels_B, *, mask_BT=None, positions_BT=None, segment_ids_BT=None
  ):
    """Returns (logits_BTV, recon_loss, aux) of the graph ``cfg.train_graph`` (module docstring).

    recon_loss = Σ over ``train_ae_layers`` of the mean squared error between the reconstruction and
    the state of expert ``labels_B[b]`` of each row (run alone), averaged over the positions where
    ``mask_BT`` (default: all) and the hidden dimension. aux: ``recon/<layer>`` per layer and
    ``weights`` (L, E, X).
    """
    cfg = self.cfg
    encoded = cfg.trained_ae_layers
    targets, states = None, None
    if encoded or cfg.train_graph == "teacher_forced":
      states = jax.lax.stop_gradient(
        self.expert_states(tokens_BT, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT)
      )
    if encoded:
      onehot_BE = jax.nn.one_hot(labels_B, cfg.num_experts, dtype=jnp.float32)
      targets = {
        l: jnp.einsum("bk,kbtd->btd", onehot_BE, states[:, l + 1].astype(jnp.float32))
        for l in encoded
      }
    mask = (
      jnp.ones(tokens_BT.shape, jnp.float32) if mask_BT is None else mask_BT.astype(jnp.float32)
    )
    recon = _Recon(targets or {}, mask, cfg.expert.d_model)
    if cfg.train_graph == "teacher_forced":
      logits = self._teacher_forced(states, recon)
    else:
      logits = self._sequential(
        tokens_BT,
        None,
        use_autoencoders=True,
        positions_BT=positions_BT,
        segment_ids_BT=segment_ids_BT,
        recon=recon,
        frozen=True,
      )
    return logits, recon.total, {**recon.parts, "weights": self.weights()}

  def _teacher_forced(self, states, recon: "_Recon") -> jax.Array:
    """The notebook's graph (p1 §3.4): every layer blends the experts' own states (E, L + 1, B, T,
    D)."""
    cfg = self.cfg
    L, E = cfg.expert.num_layers, cfg.num_experts
    w = self.weights()
    state = self._mix(self._embed_weights(w), states[:, 0])  # what block 0 would read
    routed = None
    for l in range(L):
      if self.router is not None and l == cfg.router_layer:
        routed = self._route(w, state)
      w_l = w[l] if routed is None else routed[:, :, l - cfg.router_layer]
      encode = l in cfg.trained_ae_layers
      state = self._blend_step(
        l,
        w_l,
        [states[k, l + 1] for k in range(E)],
        encode=encode,
        fused=routed is None and self._alpha_form(None),
      )
      if encode:
        recon.add(l, state)
    head_w = w[L - 1] if routed is None else routed[:, :, L - 1 - cfg.router_layer]
    return self._unembed(state, head_w, frozen=True)

  # Sequential inference graph (p1 §3.5) -----------------------------------------------------------
  def __call__(
    self, tokens_BT, *, alpha=None, use_autoencoders=True, positions_BT=None, segment_ids_BT=None
  ) -> jax.Array:
    """Logits (B, T, V_pad) of the superposed model.

    alpha: None = the learned blend (and router); for 2 experts a scalar or (L,) α (0 = base, 1 =
    expert)
      or (L, D) per dimension; for E experts a (E,) or (L, E) weight array. A traced array is fine:
      one compiled function serves every forced blend.
    use_autoencoders: False bypasses the autoencoders (plain activation blending).
    """
    return self._sequential(
      tokens_BT,
      alpha,
      use_autoencoders=use_autoencoders,
      positions_BT=positions_BT,
      segment_ids_BT=segment_ids_BT,
    )

  def _sequential(
    self,
    tokens_BT,
    alpha,
    *,
    use_autoencoders,
    positions_BT,
    segment_ids_BT,
    recon: "_Recon | None" = None,
    frozen: bool = False,
  ) -> jax.Array:
    """The inference graph. With ``recon``, autoencoders at ``train_ae_layers`` also report their
    reconstruction error (those outside ``ae_layers`` as a side branch that does not feed forward);
    ``frozen`` stops the gradient into the experts' parameters (not through their activations)."""
    cfg = self.cfg
    L = cfg.expert.num_layers
    positions_BT = self._positions(tokens_BT, positions_BT)
    w = self.weights(alpha)
    experts = [state_lib.frozen_view(x) for x in self.experts] if frozen else list(self.experts)
    mask_BTS = cache_lib.self_mask(segment_ids_BT, tokens_BT.shape[1], cfg.expert.causal)
    state = self._mix(self._embed_weights(w), [x.embed(tokens_BT, positions_BT) for x in experts])
    routed = None
    for l in range(L):
      if self.router is not None and alpha is None and l == cfg.router_layer:
        routed = self._route(w, state)
      outs = []
      for expert in experts:
        h, _, _ = expert.blocks[l](
          state, positions_BT=positions_BT, mask_BTS=mask_BTS, segment_ids_BT=segment_ids_BT
        )
        outs.append(expert.apply_final_norm(h) if l == L - 1 else h)
      w_l = w[l] if routed is None else routed[:, :, l - cfg.router_layer]
      encode = use_autoencoders and l in cfg.ae_layers
      fused = routed is None and self._alpha_form(alpha)
      if recon is not None and l in cfg.trained_ae_layers and not encode:
        recon.add(
          l, self._blend_step(l, w_l, outs, encode=True, fused=fused)
        )  # training-only autoencoder
      state = self._blend_step(l, w_l, outs, encode=encode, fused=fused)
      if recon is not None and encode:
        recon.add(l, state)
    head_w = w[L - 1] if routed is None else routed[:, :, L - 1 - cfg.router_layer]
    return self._unembed(state, head_w, frozen=frozen)


class _Recon:
  """Accumulates Σ_layers masked MSE(reconstruction, target state) for ``train_forward``."""

  def __init__(self, targets: dict, mask_BT: jax.Array, d_model: int):
    self.targets, self.mask = targets, mask_BT
    self.denom = jnp.maximum(mask_BT.sum(), 1.0) * d_model
    self.parts: dict[str, jax.Array] = {}
    self.total = jnp.zeros((), jnp.float32)

  def add(self, layer: int, state_BTD: jax.Array) -> None:
    err = jnp.square(state_BTD.astype(jnp.float32) - self.targets[layer]).sum(-1)
    self.parts[f"recon/{layer}"] = (err * self.mask).sum() / self.denom
    self.total = self.total + self.parts[f"recon/{layer}"]
