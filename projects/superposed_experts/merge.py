"""The paper's weight merge, learned per layer: θ_g = θ_g,0 + Σ_{k≥1} λ_g,k (θ_g,k − θ_g,0)
(AdaMerging-style).

p1 Algorithm 1 writes the merge as θ_l = (1 − α_l) θ_base + α_l θ_fine, one α per layer, but the
notebooks never build it. This is that model for K experts, trained with the same LM loss and data
as the superposition: a group g is the embedding (token and position tables) or one block, the last
block with the final norm and, if untied, the unembedding (a group of norms alone would have no task
vector where the experts' norms agree); λ (G, K − 1), G = L + 1, is unconstrained (task arithmetic's
extrapolation λ > 1 is allowed) and starts at 1/K — the plain average. Inference is ONE transformer
with the merged weights (``merged_params``), so its cost is one expert's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from superpose.nn import sharding
from superpose.nn.config import TransformerConfig
from superpose.nn.decoder import Transformer


def group_of(path: tuple, num_layers: int) -> int:
  """0 = embedding tables, 1 + l = block l; the final norm and an untied head join the last
  block."""
  keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  if keys[0] in ("token_embedding", "position_embedding"):
    return 0
  if keys[0] == "blocks":
    return 1 + int(keys[1])
  return num_layers


class LayerMerge(nnx.Module):
  """Parameters: ``experts/<k>/...`` (frozen) and ``lam`` (G, K − 1), G = num_layers + 1."""

  def __init__(self, expert: TransformerConfig, num_experts: int, *, rngs: nnx.Rngs):
    if num_experts < 2:
      raise ValueError(f"LayerMerge: num_experts={num_experts}; need at least 2")
    if expert.scan_layers:
      raise ValueError(
        "LayerMerge: expert.scan_layers=True; merge per block needs the looped layout"
      )
    self.cfg, self.num_experts = expert, num_experts
    self.experts = nnx.List([Transformer(expert, rngs=rngs) for _ in range(num_experts)])
    groups = expert.num_layers + 1
    self.lam = sharding.param(
      rngs, nnx.initializers.constant(1.0 / num_experts), (groups, num_experts - 1), (None, None)
    )

  def merged_params(self, stop_experts: bool = False) -> nnx.State:
    """The merged Transformer's parameter state (expert 0's structure)."""
    states = [nnx.state(x, nnx.Param) for x in self.experts]
    if stop_experts:
      states = [jax.tree.map(jax.lax.stop_gradient, s) for s in states]
    lam = self.lam[...].astype(jnp.float32)
    L = self.cfg.num_layers

    def merge(path, base, *others):
      g = group_of(path, L)
      out = base.astype(jnp.float32) + sum(
        lam[g, k] * (x.astype(jnp.float32) - base.astype(jnp.float32)) for k, x in enumerate(others)
      )
      return out.astype(base.dtype)

    return jax.tree_util.tree_map_with_path(merge, *states)

  def merged_model(self, stop_experts: bool = False) -> Transformer:
    graphdef, _, rest = nnx.split(self.experts[0], nnx.Param, ...)
    return nnx.merge(graphdef, self.merged_params(stop_experts), rest)

  def __call__(
    self, tokens_BT, *, positions_BT=None, segment_ids_BT=None, stop_experts: bool = False
  ) -> jax.Array:
    out = self.merged_model(stop_experts)(
      tokens_BT, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT
    )
    return out.logits_BTV
