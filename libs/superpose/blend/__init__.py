"""Blending primitives: B-spline bases, learned per-layer blends, and the residual-stream
autoencoder.

blend = SplineBlend(num_layers=12, rngs=nnx.Rngs(0))      # α (12,) in [0, 1]  (p1 §3.2)
ae = Autoencoder(768, 576, rngs=nnx.Rngs(0))              # causal Conv1d decoder by default
h_BTD = (1 - a) * h_base_BTD + a * h_ft_BTD; ae(h_BTD)
# one trunk + E low-rank deltas behind a causal per-token gate:
deltas = ExpertDeltas.for_config(cfg, num_deltas=E, rank=16, rngs=nnx.Rngs(0))
gate = CausalGate(cfg.d_model, E, rngs=nnx.Rngs(0))
model(tokens_BT, delta=deltas(jax.nn.softmax(gate(embedded_BTD))))
"""

from superpose.blend import bspline
from superpose.blend.autoencoder import Autoencoder
from superpose.blend.bspline import basis, clamped_knots, layer_basis
from superpose.blend.gate import CausalGate
from superpose.blend.lowrank import ExpertDeltas, values_from_experts
from superpose.blend.spline_blend import SimplexBlend, SplineBlend, SplineBlend2D

__all__ = [
  "Autoencoder",
  "CausalGate",
  "ExpertDeltas",
  "SimplexBlend",
  "SplineBlend",
  "SplineBlend2D",
  "basis",
  "bspline",
  "clamped_knots",
  "layer_basis",
  "values_from_experts",
]
