"""Superposition-step benchmark: the fused Pallas kernel (with either backward) against the jitted
plain-JAX reference.

    python -m benchmarks.superpose_kernel [--rounds 5] [--iters 10] [--decoder conv] [--dtype \\
        float32]
                                          [--block-rows 128] [--shape B,T,D,Z] [--platform
                                          tpu|gpu|cpu]
    quick check: python -m benchmarks.superpose_kernel --rounds 1 --iters 1 --shape 1,64,64,32

Prints one table, measured side by side in one run (compile excluded by a warm-up call, every call
block_until_ready, rounds rotating the order of the implementations, medians reported):
  rows: ``reference``; ``fused-recompute`` (Pallas forward, plain-JAX recompute backward,
  ``KernelConfig(backward='recompute')``); ``fused-pallas`` (Pallas forward and Pallas backward, the
  default); columns: forward time, forward + backward time (``jax.value_and_grad`` of a scalar loss
  with respect to every input), and each one's ratio reference / row (> 1: faster than the
  reference).
The two fused rows share the forward kernel, so their fwd columns measure the same thing.
On a CPU, Pallas runs in interpret mode (a jitted scan over the grid): the table then checks that
the paths run and agree, it is NOT a speed measure (nothing about a TPU or GPU); the default shape
there is small. On a TPU the default is the p1 shape d768 / bottleneck 576; on a GPU, where the
Triton kernel needs power-of-two D and Z, it is B8 T1024 D512 Z256 (or pass e.g. --shape
8,1024,1024,512).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from superpose.kernels import KernelConfig, fused, reference

CPU_SHAPE = (2, 256, 128, 96)  # B, T, D, Z
DEVICE_SHAPE = (8, 1024, 768, 576)  # p1's GPT-2 width and bottleneck (TPU)
GPU_SHAPE = (8, 1024, 512, 256)  # Triton needs power-of-two D and Z


def make_args(shape, decoder: str, kernel_size: int, dtype, seed: int = 0):
  B, T, D, Z = shape
  rng = np.random.default_rng(seed)
  normal = lambda s, scale=1.0, dt=dtype: jnp.asarray(scale * rng.normal(size=s), dt)
  dec_shape, fan = ((Z, D), Z) if decoder == "linear" else ((kernel_size, Z, D), Z * kernel_size)
  args = (
    normal((B, T, D)),
    normal((B, T, D)),
    jnp.asarray(rng.uniform(size=(D,)), jnp.float32),
    normal((D, Z), D**-0.5, jnp.float32),
    normal((Z,), D**-0.5, jnp.float32),
    normal(dec_shape, fan**-0.5, jnp.float32),
    normal((D,), fan**-0.5, jnp.float32),
  )
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
  parser.add_argument("--shape", type=str, default=None, help="B,T,D,Z (default: by device)")
  parser.add_argument(
    "--platform",
    choices=("tpu", "gpu", "cpu"),
    default=None,
    help="kernel variant (default: the backend's)",
  )
  args = parser.parse_args()

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  print(
    f"device: {device.device_kind} ({device.platform}), {jax.local_device_count()} local "
    "device(s); "
    f"jax {jax.__version__}"
  )
  configs = {
    bwd: KernelConfig(block_rows=args.block_rows, backward=bwd, platform=args.platform)
    for bwd in ("recompute", "pallas")
  }
  config = configs["pallas"]
  interpret = config.use_interpret()
  if interpret:
    print(
      "NOTE: Pallas runs in INTERPRET MODE here (each kernel is a jitted scan over its grid, no "
      "Mosaic/Triton): the times below are NOT a speed measure of the kernels, only a check that "
      "all "
      "paths run and agree"
    )
  default = (
    CPU_SHAPE if on_cpu else GPU_SHAPE if config.resolved_platform() == "gpu" else DEVICE_SHAPE
  )
  shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else default
  dtype = jnp.dtype(args.dtype)
  inputs = make_args(shape, args.decoder, args.kernel_size, dtype)
  B, T, D, Z = shape
  W = 1 if args.decoder == "linear" else args.kernel_size
  print(
    f"shape: B{B} T{T} D{D} Z{Z}, decoder {args.decoder} (W={W}), α per feature, {args.dtype}; "
    f"block_rows {config.block_rows}, platform {config.resolved_platform()}, interpret {interpret}"
  )

  argnums = tuple(range(7))
  loss = lambda fn: lambda *a: jnp.sum(fn(*a).astype(jnp.float32) ** 2)
  impls = {"reference": reference}
  impls.update(
    {f"fused-{bwd}": (lambda c: lambda *a: fused(*a, config=c))(c) for bwd, c in configs.items()}
  )
  fns = {
    "fwd": {name: jax.jit(f) for name, f in impls.items()},
    "fwd+bwd": {name: jax.jit(jax.value_and_grad(loss(f), argnums)) for name, f in impls.items()},
  }

  # Agreement with the reference (forward output and every gradient), max |difference| /
  # max |reference|.
  outs = {name: f(*inputs) for name, f in fns["fwd+bwd"].items()}
  ref_leaves = jax.tree.leaves(outs["reference"])
  for name in impls:
    if name == "reference":
      continue
    rel = max(
      float(
        jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))
        / max(float(jnp.max(jnp.abs(b.astype(jnp.float32)))), 1e-30)
      )
      for a, b in zip(jax.tree.leaves(outs[name]), ref_leaves)
    )
    print(
      f"{name}: max relative |difference| from reference over the loss and all 7 gradients: "
      f"{rel:.2e}"
    )

  med, ratio = {}, {}
  for what, group in fns.items():
    for f in group.values():  # compile and warm up
      jax.block_until_ready(f(*inputs))
    times = {name: [] for name in group}
    names = list(group)
    for r in range(args.rounds):
      for name in names[r % len(names) :] + names[: r % len(names)]:
        times[name].append(time_call(group[name], inputs, args.iters))
    for name, ts in times.items():
      med[what, name] = statistics.median(ts)
      ratio[what, name] = statistics.median([ref / t for ref, t in zip(times["reference"], ts)])

  title = "INTERPRET MODE, not a speed measure" if interpret else device.device_kind
  print(f"\n| impl ({title}) | fwd ms | ref/fwd | fwd+bwd ms | ref/(fwd+bwd) |")
  print("|---|---:|---:|---:|---:|")
  for name in impls:
    print(
      f"| {name} | {med['fwd', name] * 1e3:.3f} | {ratio['fwd', name]:.2f} | "
      f"{med['fwd+bwd', name] * 1e3:.3f} | {ratio['fwd+bwd', name]:.2f} |"
    )
  print(
    f"(medians of {args.rounds} rounds × {args.iters} calls; ratio = median over rounds of "
    "reference / impl)"
  )


if __name__ == "__main__":
  main()
