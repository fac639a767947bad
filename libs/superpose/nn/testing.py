"""Models with numpy-drawn weights: no JAX PRNG compilations, non-trivial biases and norm affines.

For tests and quick experiments (on a 2-core CPU each new PRNG shape costs a compilation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose.nn.config import TransformerConfig
from superpose.nn.decoder import Transformer


def random_model(cfg: TransformerConfig, seed: int = 0, scale: float = 0.3) -> Transformer:
  """Every weight ~ N(0, scale²); norm scales ~ 1 + N(0, scale²)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(path, a):
    centre = 1.0 if "scale" in jax.tree_util.keystr(path) else 0.0
    return jnp.asarray(centre + scale * rng.standard_normal(a.shape), a.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, abstract))
