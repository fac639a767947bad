"""One transformer block: attention then MLP, each with a pre-, post- or no norm (see config)."""

from __future__ import annotations

import jax
from flax import nnx

from superpose.nn import deltas, sharding
from superpose.nn.attention import Attention
from superpose.nn.config import TransformerConfig
from superpose.nn.layers import Norm
from superpose.nn.mlp import MLP

RESIDUAL_AXES = ("batch", "length", "act_embed")


class Block(nnx.Module):
  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    has_norm = cfg.norm != "none"
    self.attn_norm = Norm(cfg, rngs=rngs) if has_norm and cfg.attn_norm != "none" else None
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = Norm(cfg, rngs=rngs) if has_norm and cfg.mlp_norm != "none" else None
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(
    self,
    x_BTD,
    *,
    positions_BT,
    mask_BTS,
    segment_ids_BT=None,
    kv_cache=None,
    return_probs=False,
    delta: deltas.Delta | None = None,
  ):
    """Returns (x_BTD, updated (k, v) of this layer or None, attention probs or None).

    delta: per-token deltas of this block's parameters (``attn/…``, ``mlp/…``, ``*_norm/…``).
    """
    cfg = self.cfg
    attn_norm_delta, mlp_norm_delta = deltas.sub(delta, "attn_norm"), deltas.sub(delta, "mlp_norm")
    pre = self.attn_norm is not None and cfg.attn_norm == "pre"
    h = self.attn_norm(x_BTD, attn_norm_delta) if pre else x_BTD
    h, kv_cache, probs = self.attn(
      h,
      positions_BT=positions_BT,
      mask_BTS=mask_BTS,
      segment_ids_BT=segment_ids_BT,
      kv_cache=kv_cache,
      return_probs=return_probs,
      delta=deltas.sub(delta, "attn"),
    )
    x_BTD = x_BTD + h
    if self.attn_norm is not None and cfg.attn_norm == "post":
      x_BTD = self.attn_norm(x_BTD, attn_norm_delta)
    x_BTD = sharding.constrain(x_BTD, RESIDUAL_AXES)

    pre = self.mlp_norm is not None and cfg.mlp_norm == "pre"
    h = self.mlp(self.mlp_norm(x_BTD, mlp_norm_delta) if pre else x_BTD, deltas.sub(delta, "mlp"))
    x_BTD = x_BTD + h if cfg.mlp_residual else h
    if self.mlp_norm is not None and cfg.mlp_norm == "post":
      x_BTD = self.mlp_norm(x_BTD, mlp_norm_delta)
    return sharding.constrain(x_BTD, RESIDUAL_AXES), kv_cache, probs


def remat_policy(name: str):
  """jax.checkpoint policy for config ``remat`` (``'full'`` saves nothing and recomputes the
  block)."""
  return {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }[name]
