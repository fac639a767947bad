"""Model FLOPs per token and MFU.

Convention (PaLM / MaxText, causal attention halved, stated so numbers are comparable):
  training FLOPs per token = 6 · N + 6 · L · T · H · Dh
where N counts the matmul parameters (attention and MLP projections and the unembedding; not the
embedding lookup, norms or biases), L layers, T the sequence length, H query heads of size Dh. The
attention term is 3 × (2 matmuls · 2 FLOPs · T · H · Dh) / 2 for the causal half. Rematerialisation
is not counted (MFU, not HFU).
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip (the figures MaxText/Levanter use).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12, "NVIDIA B200": 2250e12,
}


def matmul_params(cfg) -> int:
  """Parameters that take part in a matmul per token (see module docstring)."""
  d, h, kv, dh, f = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_size, cfg.d_ff
  attn = d * h * dh + 2 * d * kv * dh + h * dh * d
  mlp = (3 if cfg.activation == "swiglu" else 2) * d * f
  return cfg.num_layers * (attn + mlp) + d * cfg.padded_vocab


def train_flops_per_token(cfg, seq_len: int) -> float:
  return 6.0 * matmul_params(cfg) + 6.0 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_size


@functools.lru_cache(maxsize=None)
def measured_cpu_peak(n: int = 2048, repeats: int = 4) -> float:
  """f32 matmul FLOP/s of this CPU, measured (CPUs have no published peak to quote)."""
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def device_peak_flops(device=None) -> tuple[float, str]:
  """(peak FLOP/s per device, where the figure comes from)."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  for name, peak in PEAK_FLOPS.items():
    if kind.startswith(name):
      return peak, f"{name} bf16 dense peak"
  if device.platform == "cpu":
    return measured_cpu_peak() / max(1, jax.local_device_count()), "measured f32 matmul peak of this CPU"
  return float("nan"), f"unknown peak for {kind!r}"
