"""The per-layer autoencoder of p1 §3.3: Linear(d → bottleneck) + exact GELU, then a decoder back to
d.

The decoder is a Linear, or a Conv1d along the sequence axis T of each row (as the paper's). Rows
are taken to be single sequences: with several packed documents per row the conv's taps would reach
across a document boundary.

Causal padding (kernel_size − 1 on the left) is the default. The paper's symmetric padding lets
output t see input t+1 (p1 §1, §7.4: its training LM loss falls to 0.175 nats); it stays available,
with a warning, for faithful reproduction.

Weights are laid out for (B, T, C) activations: the conv kernel is (kernel_size, in, out), i.e. a
torch ``Conv1d.weight`` (out, in, k) transposed by (2, 1, 0); a torch ``Linear.weight`` transposed.
Initialisation matches torch (p1 §7.6) so a reproduction can start from the same distribution.
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
from flax import nnx

from superpose.nn import sharding

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


def torch_uniform(fan_in: int):
  """U(±1/√fan_in): torch's kaiming_uniform(a=√5) for weights, and its default for biases."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _warn_non_causal(kernel_size: int) -> None:
  if "non_causal" in _WARNED:
    return
  _WARNED.add("non_causal")
  log.warning(
    "Autoencoder: non-causal conv decoder (kernel %d, symmetric padding): output t sees inputs up "
    "to t+%d, which leaks future tokens into a language-model loss (p1 §7.4)",
    kernel_size,
    (kernel_size - 1) // 2,
  )


class Autoencoder(nnx.Module):
  """h_BTD → GELU(h·enc + enc_bias) → decoder → (B, T, D); no residual, no norm (p1 §3.3)."""

  def __init__(
    self,
    d_model: int,
    bottleneck: int,
    *,
    decoder: str = "conv",
    kernel_size: int = 3,
    causal: bool = True,
    rngs: nnx.Rngs,
    param_dtype=jnp.float32,
  ):
    if decoder not in ("conv", "linear"):
      raise ValueError(f"Autoencoder: decoder must be 'conv' or 'linear', got {decoder!r}")
    if decoder == "conv" and kernel_size < 1:
      raise ValueError(f"Autoencoder: kernel_size must be >= 1, got {kernel_size}")
    if decoder == "conv" and not causal and kernel_size % 2 == 0:
      raise ValueError(
        f"Autoencoder: symmetric padding keeps the length only for odd kernels, got {kernel_size}"
      )
    self.decoder = decoder
    self.kernel_size = kernel_size
    self.causal = bool(causal)
    if decoder == "conv" and not causal and kernel_size > 1:
      _warn_non_causal(kernel_size)

    d, b, pdt = d_model, bottleneck, param_dtype
    self.enc = sharding.param(rngs, torch_uniform(d), (d, b), ("embed", "bottleneck"), pdt)
    self.enc_bias = sharding.param(rngs, torch_uniform(d), (b,), ("bottleneck",), pdt)
    if decoder == "conv":
      fan_in = b * kernel_size
      self.dec = sharding.param(
        rngs, torch_uniform(fan_in), (kernel_size, b, d), (None, "bottleneck", "embed"), pdt
      )
    else:
      fan_in = b
      self.dec = sharding.param(rngs, torch_uniform(fan_in), (b, d), ("bottleneck", "embed"), pdt)
    self.dec_bias = sharding.param(rngs, torch_uniform(fan_in), (d,), ("embed",), pdt)

  def padding(self) -> tuple[int, int]:
    """(left, right) zero padding of the conv along T."""
    k = self.kernel_size
    return (k - 1, 0) if self.causal else ((k - 1) // 2, (k - 1) // 2)

  def __call__(self, h_BTD: jax.Array) -> jax.Array:
    """Reconstruction of ``h_BTD``, computed in its dtype with f32 accumulation; GELU in f32."""
    dtype = h_BTD.dtype
    z_BTZ = jnp.einsum(
      "btd,dk->btk", h_BTD, self.enc[...].astype(dtype), preferred_element_type=jnp.float32
    )
    z_BTZ = jax.nn.gelu(z_BTZ + self.enc_bias[...].astype(jnp.float32), approximate=False).astype(
      dtype
    )
    if self.decoder == "linear":
      y_BTD = jnp.einsum(
        "btk,kd->btd", z_BTZ, self.dec[...].astype(dtype), preferred_element_type=jnp.float32
      )
    else:
      # Cross-correlation over T like torch's Conv1d: y_t = Σ_j z_{t − left + j} · W_j.
      y_BTD = jax.lax.conv_general_dilated(
        z_BTZ,
        self.dec[...].astype(dtype),
        window_strides=(1,),
        padding=[self.padding()],
        dimension_numbers=("NWC", "WIO", "NWC"),
        preferred_element_type=jnp.float32,
      )
    return (y_BTD + self.dec_bias[...].astype(jnp.float32)).astype(dtype)
