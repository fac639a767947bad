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
import logging
import time

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per chip (the figures MaxText/Levanter use).
PEAK_FLOPS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100": 312e12,
  "NVIDIA B200": 2250e12,
}


def matmul_params(cfg) -> int:
  """Parameters that take part in a matmul per token (see module docstring)."""
  d, h, kv, dh, f = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_size, cfg.d_ff
  attn = d * h * dh + 2 * d * kv * dh + h * dh * d
  mlp = (3 if cfg.activation == "swiglu" else 2) * d * f
  return cfg.num_layers * (attn + mlp) + d * cfg.padded_vocab


def train_flops_per_token(cfg, seq_len: int) -> float:
  return 6.0 * matmul_params(cfg) + 6.0 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_size


def measure_cpu_peak(n: int = 2048, repeats: int = 4) -> float:
  """f32 matmul FLOP/s of this CPU now (best of ``repeats``); a busy machine measures less."""
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


@functools.lru_cache(maxsize=None)
def measured_cpu_peak(n: int = 2048, repeats: int = 4) -> float:
  """f32 matmul FLOP/s of this CPU, measured once per process (CPUs have no published peak to
  quote)."""
  return measure_cpu_peak(n, repeats)


def device_peak_flops(device=None) -> tuple[float, str]:
  """(peak FLOP/s per device, where the figure comes from)."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  for name, peak in PEAK_FLOPS.items():
    if kind.startswith(name):
      return peak, f"{name} bf16 dense peak"
  if device.platform == "cpu":
    return measured_cpu_peak() / max(
      1, jax.local_device_count()
    ), "measured f32 matmul peak of this CPU"
  return float("nan"), f"unknown peak for {kind!r}"


class Peak:
  """The peak FLOP/s of the whole job that MFU divides by, such that MFU never exceeds 100 %.

  A chip of :data:`PEAK_FLOPS` uses the table. A CPU has no published peak: its matmul rate is
  measured at start-up, which under-measures when other work loads the cores then; so the figure is
  the best of the start-up and later measurements (:meth:`remeasure`, at most every
  ``remeasure_every_s``), and any rate a train step reached (:meth:`mfu`) raises it too: a peak is
  never below what was achieved.
  """

  def __init__(self, num_devices: int | None = None, device=None, remeasure_every_s: float = 300.0):
    per_device, self.source = device_peak_flops(device)
    self._devices = num_devices or jax.device_count()
    self._local = max(1, jax.local_device_count())
    self.total = per_device * self._devices
    self.measured = self.source.startswith("measured")
    self._every, self._last = remeasure_every_s, time.monotonic()
    self._said: set[str] = set()

  def _raise_to(self, total: float, why: str) -> None:
    if total > self.total:
      level = logging.DEBUG if why in self._said else logging.INFO  # once per reason in the log
      self._said.add(why)
      log.log(level, "MFU peak raised from %.3g to %.3g FLOP/s (%s)", self.total, total, why)
      self.total = total

  def remeasure(self) -> None:
    """Measure a CPU's matmul rate again (no-op for table chips, or when measured recently)."""
    if not self.measured or time.monotonic() - self._last < self._every:
      return
    self._last = time.monotonic()
    self._raise_to(measure_cpu_peak() / self._local * self._devices, "a later measurement")

  def mfu(self, flops_per_s: float) -> float:
    """``flops_per_s`` as a fraction of the peak (≤ 1: a faster rate raises the peak first)."""
    self._raise_to(flops_per_s, "a train step ran faster than it")
    return flops_per_s / self.total
