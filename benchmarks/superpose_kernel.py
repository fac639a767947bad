"""Superposition-step benchmark: the fused Pallas kernel against the jitted plain-JAX reference.

    python -m benchmarks.superpose_kernel [--rounds 5] [--iters 10] [--decoder conv] [--dtype float32]
                                          [--block-rows 128] [--shape B,T,D,K]

Prints, measured side by side in one run (compile excluded by a warm-up call, every call
block_until_ready, rounds alternating the two implementations, medians reported):
  * forward time of ``fused`` and ``reference`` and their ratio (reference / fused; > 1: kernel faster);
  * forward + backward (``jax.value_and_grad`` of a scalar loss with respect to every input) likewise.
The backward of ``fused`` is a plain-JAX recompute, so fwd+bwd measures the forward kernel inside it.
On a CPU, Pallas runs in interpret mode (a jitted scan over the grid), so the ratio says nothing about
a TPU; the default shape there is small. Elsewhere the default is the p1 shape d768 / bottleneck 576.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from superpose.kernels import KernelConfig, fused, reference

CPU_SHAPE = (2, 256, 128, 96)        # B, T, D, K
DEVICE_SHAPE = (8, 1024, 768, 576)


def make_args(shape, decoder: str, kernel_size: int, dtype, seed: int = 0):
  B, T, D, K = shape
  rng = np.random.default_rng(seed)
  normal = lambda s, scale=1.0, dt=dtype: jnp.asarray(scale * rng.normal(size=s), dt)
  dec_shape, fan = ((K, D), K) if decoder == "linear" else ((kernel_size, K, D), K * kernel_size)
  args = (normal((B, T, D)), normal((B, T, D)), jnp.asarray(rng.uniform(size=(D,)), jnp.float32),
          normal((D, K), D ** -0.5, jnp.float32), normal((K,), D ** -0.5, jnp.float32),
          normal(dec_shape, fan ** -0.5, jnp.float32), normal((D,), fan ** -0.5, jnp.float32))
  return jax.block_until_ready(args)


def time_call(f, args, iters: int) -> float:
  t0 = time.perf_counter()
  for _ in range(iters):
    out = f(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / iters


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--iters", type=int, default=10, help="calls per timed block")
  parser.add_argument("--decoder", choices=("conv", "linear"), default="conv")
  parser.add_argument("--kernel-size", type=int, default=3)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--block-rows", type=int, default=128)
  parser.add_argument("--shape", type=str, default=None, help="B,T,D,K (default: by device)")
  args = parser.parse_args()

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  print(f"device: {device.device_kind} ({device.platform}), {jax.local_device_count()} local device(s); "
        f"jax {jax.__version__}")
  config = KernelConfig(block_rows=args.block_rows)
  if config.use_interpret():
    print("note: Pallas runs in interpret mode on this backend (the kernel is a jitted scan over its grid, "
          "not Mosaic), so the fused/reference ratio is not meaningful here")
  shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else (CPU_SHAPE if on_cpu else DEVICE_SHAPE)
  dtype = jnp.dtype(args.dtype)
  inputs = make_args(shape, args.decoder, args.kernel_size, dtype)
  B, T, D, K = shape
  W = 1 if args.decoder == "linear" else args.kernel_size
  print(f"shape: B{B} T{T} D{D} K{K}, decoder {args.decoder} (W={W}), α per feature, {args.dtype}; "
        f"block_rows {config.block_rows}, interpret {config.use_interpret()}")

  argnums = tuple(range(7))
  loss = lambda fn: (lambda *a: jnp.sum(fn(*a).astype(jnp.float32) ** 2))
  fns = {
      "fwd": {"fused": jax.jit(lambda *a: fused(*a, config=config)), "reference": reference},
      "fwd+bwd": {"fused": jax.jit(jax.value_and_grad(loss(lambda *a: fused(*a, config=config)), argnums)),
                  "reference": jax.jit(jax.value_and_grad(loss(reference), argnums))},
  }
  y_f, y_r = fns["fwd"]["fused"](*inputs), fns["fwd"]["reference"](*inputs)
  err = float(jnp.max(jnp.abs(y_f.astype(jnp.float32) - y_r.astype(jnp.float32))))
  print(f"max |fused − reference| (forward): {err:.2e}")

  for what, pair in fns.items():
    for f in pair.values():   # compile and warm up
      jax.block_until_ready(f(*inputs))
    times = {name: [] for name in pair}
    for r in range(args.rounds):
      order = list(pair) if r % 2 == 0 else list(reversed(pair))
      for name in order:
        times[name].append(time_call(pair[name], inputs, args.iters))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratios = [ref / fu for ref, fu in zip(times["reference"], times["fused"])]
    print(f"{what:>8}: fused {med['fused'] * 1e3:8.3f} ms   reference {med['reference'] * 1e3:8.3f} ms   "
          f"ratio (reference / fused, median of {args.rounds} rounds) {statistics.median(ratios):.3f}  "
          f"[min {min(ratios):.3f}, max {max(ratios):.3f}]")


if __name__ == "__main__":
  main()
