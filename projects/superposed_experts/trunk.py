"""One trunk holds every expert: the trunk's weights plus per-expert low-rank deltas behind a causal
gate.

For every trunk parameter θ the forward at token t uses θ + Σ_k g_k(t) Δ_k (superpose.nn.deltas):
Δ_k is low rank for matrices (initialised from the truncated SVD of θ_k − θ_trunk, rank ``rank``),
full for biases and norm scales, low rank or full for the embedding tables (``delta_embeddings``).
The trunk is expert 0 (the base; its delta would be zero, so only experts 1..E−1 get one) or, with
``trunk_from``, the merged weights of a learned ``merge`` run (then every expert gets a delta).

The gate g(t) = softmax over the E experts of a small MLP (superpose.blend.CausalGate) that reads
the trunk's own input embedding at t and its exponential moving averages over the prefix (several
decay rates): causal — token t+1 never reaches g(t) — and able to switch domain within a sequence,
because the short averages forget. Reading the embedding (state 0) rather than a deeper trunk state
keeps inference to ONE pass of ONE trunk: the gate is known before block 0 runs. The gate's
probability of expert 0 weighs "no delta" when the trunk is the base.

Training (train.py, ``method='trunk'``): the trunk is frozen; the deltas and the gate learn from the
LM loss on the same balanced domain batches as every other method, plus ``gate_label_weight`` · the
cross-entropy of the gate against the row's domain label (the labels the paper's method also uses)
and, with ``distill_weight`` > 0, · KL(expert ‖ model) to the next-token distribution of the row's
own expert (the experts are then held as frozen ``teachers`` during training only: they are in the
checkpoint but never in the inference forward, and cost.py does not count them).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from superpose.blend import CausalGate, ExpertDeltas
from superpose.blend.lowrank import values_from_experts
from superpose.nn.config import TransformerConfig
from superpose.nn.decoder import Transformer
from superpose.train import config as config_lib
from superpose.train import state as state_lib

DELTA_VECTORS = ("full", "none")
DELTA_EMBEDDINGS = ("lowrank", "full", "none")


@dataclasses.dataclass(frozen=True)
class TrunkConfig:
  expert: TransformerConfig
  num_experts: int
  delta_experts: tuple[
    int, ...
  ]  # experts with a delta, in gate order (1..E−1 when the trunk is the base)
  rank: int = 8
  delta_vectors: str = "full"
  delta_embeddings: str = "lowrank"
  gate_hidden: int = 32
  gate_decays: tuple[float, ...] = (0.0, 0.9, 0.98)
  distill: bool = False  # hold the E experts as frozen teachers (training only)

  def __post_init__(self):
    errors = []
    if self.num_experts < 2:
      errors.append(f"num_experts={self.num_experts}: need at least 2")
    if self.rank < 1:
      errors.append(f"rank={self.rank}: must be ≥ 1")
    if self.delta_vectors not in DELTA_VECTORS:
      errors.append(f"delta_vectors={self.delta_vectors!r}: one of {', '.join(DELTA_VECTORS)}")
    if self.delta_embeddings not in DELTA_EMBEDDINGS:
      errors.append(
        f"delta_embeddings={self.delta_embeddings!r}: one of {', '.join(DELTA_EMBEDDINGS)}"
      )
    if not self.delta_experts or any(not 0 <= k < self.num_experts for k in self.delta_experts):
      errors.append(f"delta_experts={self.delta_experts}: indices in [0, {self.num_experts})")
    if any(not 0.0 <= d < 1.0 for d in self.gate_decays):
      errors.append(f"gate_decays={self.gate_decays}: each in [0, 1)")
    if self.expert.scan_layers:
      errors.append("expert.scan_layers=True: use the looped layout")
    if errors:
      raise ValueError("invalid trunk config: " + "; ".join(errors))


def trunk_config(config: Mapping, expert: TransformerConfig) -> TrunkConfig:
  s = config["superposed"]
  E = int(s["num_experts"])
  try:
    return TrunkConfig(
      expert=expert,
      num_experts=E,
      delta_experts=tuple(range(E)) if s["trunk_from"] else tuple(range(1, E)),
      rank=int(s["rank"]),
      delta_vectors=s["delta_vectors"],
      delta_embeddings=s["delta_embeddings"],
      gate_hidden=int(s["gate_hidden"]),
      gate_decays=tuple(float(d) for d in s["gate_decays"]),
      distill=float(s["distill_weight"]) > 0,
    )
  except ValueError as e:
    raise config_lib.ConfigError(f"config.superposed: {e}") from None


class OneTrunk(nnx.Module):
  """Parameters: ``trunk/...`` (a superpose.nn.Transformer, frozen), ``deltas/...`` (ExpertDeltas at
  the trunk's paths), ``gate/...`` (CausalGate) and, with ``distill``, ``teachers/<k>/...`` (frozen
  experts)."""

  def __init__(self, cfg: TrunkConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.trunk = Transformer(cfg.expert, rngs=rngs)
    # Shapes and logical axes from the trunk just built (a nested eval_shape would lose the mesh
    # rules).
    self.deltas = ExpertDeltas(
      nnx.state(self.trunk, nnx.Param),
      len(cfg.delta_experts),
      cfg.rank,
      rngs=rngs,
      vector_mode=cfg.delta_vectors,
      embedding_mode=cfg.delta_embeddings,
    )
    self.gate = CausalGate(
      cfg.expert.d_model, cfg.num_experts, hidden=cfg.gate_hidden, decays=cfg.gate_decays, rngs=rngs
    )
    self.teachers = (
      nnx.List([Transformer(cfg.expert, rngs=rngs) for _ in range(cfg.num_experts)])
      if cfg.distill
      else None
    )

  def teacher_logprobs(
    self, tokens_BT, labels_B, *, positions_BT=None, segment_ids_BT=None
  ) -> jax.Array:
    """log p of each row's own expert (B, T, V), as constants (training only)."""
    logits = jnp.stack(
      [
        state_lib.frozen_view(t)(
          tokens_BT, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT
        ).logits_BTV
        for t in self.teachers
      ]
    )
    picked = jnp.take_along_axis(logits, labels_B[None, :, None, None], axis=0)[0]
    return jax.lax.stop_gradient(jax.nn.log_softmax(picked.astype(jnp.float32), -1))

  def gate_logits(
    self, tokens_BT, *, positions_BT=None, segment_ids_BT=None, trunk=None
  ) -> jax.Array:
    """(B, T, E): the gate reads the trunk's input embedding (no delta) and its causal averages."""
    trunk = self.trunk if trunk is None else trunk
    return self.gate(trunk.embed(tokens_BT, positions_BT), segment_ids_BT)

  def gate_probs(self, tokens_BT, **kwargs) -> jax.Array:
    return jax.nn.softmax(self.gate_logits(tokens_BT, **kwargs).astype(jnp.float32), axis=-1)

  def forward(
    self,
    tokens_BT,
    *,
    gate_BTE=None,
    stop_trunk: bool = False,
    positions_BT=None,
    segment_ids_BT=None,
  ) -> tuple[jax.Array, jax.Array]:
    """(logits_BTV, gate logits (B, T, E)). ``gate_BTE`` forces the expert weights (an oracle gate);
    ``stop_trunk`` makes the trunk's parameters constants for autodiff (training: it is frozen)."""
    trunk = state_lib.frozen_view(self.trunk) if stop_trunk else self.trunk
    logits_BTE = self.gate_logits(
      tokens_BT, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT, trunk=trunk
    )
    probs = (
      jax.nn.softmax(logits_BTE.astype(jnp.float32), -1)
      if gate_BTE is None
      else gate_BTE.astype(jnp.float32)
    )
    delta = self.deltas(probs[..., jnp.asarray(self.cfg.delta_experts)])
    out = trunk(tokens_BT, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT, delta=delta)
    return out.logits_BTV, logits_BTE

  def __call__(
    self, tokens_BT, *, gate_BTE=None, positions_BT=None, segment_ids_BT=None
  ) -> jax.Array:
    return self.forward(
      tokens_BT, gate_BTE=gate_BTE, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT
    )[0]


def extra_flops_per_token(cfg: TrunkConfig) -> float:
  """Forward FLOPs per token beyond the trunk's: every delta path and the gate."""
  model = nnx.eval_shape(lambda: OneTrunk(cfg, rngs=nnx.Rngs(0)))
  return float(model.deltas.flops_per_token() + model.gate.flops_per_token())


def extra_params(cfg: TrunkConfig) -> int:
  """Parameters held at inference beyond the trunk's: the deltas and the gate (not the teachers)."""
  model = nnx.eval_shape(lambda: OneTrunk(cfg, rngs=nnx.Rngs(0)))
  return sum(
    math.prod(x.shape)
    for part in (model.deltas, model.gate)
    for x in jax.tree.leaves(nnx.state(part, nnx.Param))
  )


def trunk_params(experts: Sequence, trunk_from: str):
  """The trunk's parameter values: expert 0's, or the merged weights of the ``merge`` run
  ``trunk_from``."""
  if not trunk_from:
    return experts[0]
  from projects.superposed_experts import evaluate
  from superpose.train.loader import load_model

  if not pathlib.Path(trunk_from).exists():
    raise config_lib.ConfigError(f"config.superposed.trunk_from: {trunk_from} does not exist")
  loaded = load_model(trunk_from)
  if evaluate.method_of(loaded.config) != "merge":
    raise config_lib.ConfigError(f"config.superposed.trunk_from: {trunk_from} is not a 'merge' run")
  return nnx.to_pure_dict(loaded.model.merged_params())


def initial_values(cfg: TrunkConfig, experts: Sequence, trunk_from: str, abs_params) -> dict:
  """{'trunk': the trunk's values, 'deltas': the truncated SVD of each delta expert minus the trunk,
  and with ``distill`` 'teachers': the experts}, placed with ``abs_params``' shardings."""
  trunk = trunk_params(experts, trunk_from)
  deltas = values_from_experts(
    trunk,
    [experts[k] for k in cfg.delta_experts],
    cfg.rank,
    vector_mode=cfg.delta_vectors,
    embedding_mode=cfg.delta_embeddings,
  )
  place = lambda tree, abstract: jax.tree.map(
    lambda x, a: jax.device_put(jnp.asarray(x, a.dtype), a.sharding), tree, abstract
  )
  out = {"trunk": place(trunk, abs_params["trunk"]), "deltas": place(deltas, abs_params["deltas"])}
  if cfg.distill:
    # Copies: teacher 0 may be the trunk itself, and one buffer must not be donated twice by the
    # train step.
    out["teachers"] = {
      str(k): place(jax.tree.map(jnp.copy, x), abs_params["teachers"][str(k)])
      for k, x in enumerate(experts)
    }
  return out
