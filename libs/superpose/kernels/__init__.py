"""Pallas kernels (interpret mode on CPU) with plain-JAX references and a config-string dispatch.

y_BTD = superpose_step(h_base, h_expert, alpha, enc, enc_bias, dec, dec_bias, impl="pallas",
                       config=KernelConfig(block_rows=128))
"""

from superpose.kernels.reference import reference
from superpose.kernels.superpose_step import (
  IMPLS,
  KernelConfig,
  autoencoder_params,
  fused,
  superpose_step,
)

__all__ = ["IMPLS", "KernelConfig", "autoencoder_params", "fused", "reference", "superpose_step"]
