"""Losses shared by the trainers (every project's language-modelling loss is this one)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["lm_loss"]


def lm_loss(
  logits_BTV: jax.Array, targets_BT: jax.Array, weights_BT: jax.Array, z_loss: float = 0.0
):
  """Mean cross-entropy over weighted targets (f32), optional z-loss; returns (loss, metrics)."""
  logits = logits_BTV.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets_BT)
  denom = jnp.maximum(weights_BT.sum(), 1.0)
  loss = (ce * weights_BT).sum() / denom
  metrics = {"accuracy": ((logits.argmax(-1) == targets_BT) * weights_BT).sum() / denom}
  if z_loss:
    log_z = jax.nn.logsumexp(logits, axis=-1)
    zl = z_loss * (jnp.square(log_z) * weights_BT).sum() / denom
    metrics.update({"ce": loss, "z_loss": zl})
    loss = loss + zl
  return loss, metrics
