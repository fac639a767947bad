"""LM train-step benchmark at a fixed shape: L6 d512 H8 T256 B8 V4096, f32, one device.

    python benchmarks/lm_step.py [--rounds 7] [--steps 4]
    python benchmarks/lm_step.py --size small    # L4 d256 H4 T256 B8 V1024, f32
    python benchmarks/lm_step.py --dtype both    # + the same step with bf16 compute, side by side
    python benchmarks/lm_step.py --size 350m     # gpt2 L24 d1024 H16 T1024 B8 V50304, bf16 \\
        (accelerators)

``--size 350m`` is the accelerator benchmark (issue 8): bf16 compute and parameters in f32, MFU
against the chip's bf16 dense peak from ``superpose.train.flops.PEAK_FLOPS`` (device named in the
output). On a CPU it says so and runs the default shape instead (``--force`` runs the 350M shape
anyway: minutes per step on 2 cores).

Prints, measured side by side in one run:
  * the machine's f32 matmul peak (best of 2048³ and 4096³ matmuls, before and after the rounds);
  * tokens/s and MFU of superpose's train step, driven as the train loop drives it (host batch →
    global array → jitted step with shardings, donation and the non-finite guard → metrics fetched
    one step late);
  * the same model, loss and optimizer stepped by a plain ``jax.jit`` over the split state;
  * their ratio (plain time / superpose time; ≥ 0.97 means ≤ 3 % framework overhead).
Rounds alternate the two (ABBA order) and the medians of per-round values are reported.
Targets: overhead ratio ≥ 0.97 (issue 3); MFU ≥ 58 % at L6 d512 and ≥ 50 % at L4 d256 (issue 24).

``--profile`` prints where superpose's step time goes instead (superpose.train.profile: XLA:CPU's
per-operation trace events joined with the optimized HLO; kinds by what an operation computes,
phases by the JAX name stack; where operations overlap, the moment is shared among them). Before
issue 24's changes (2026-12-07, this 2-core CPU, nothing else running; wall 3.34 s per step, some
operation running during 3.24 s):

  kind                       ms   share  forward / backward / rest ms
  element-wise             1343   41.4 %  523 / 781 / 40
  matmul btd,df->btf        499   15.4 %  88 / 411 / 0       (MLP in)
  matmul btf,fd->btd        435   13.4 %  74 / 361 / 0       (MLP out)
  matmul btd,dhk->bthk      307    9.5 %  83 / 224 / 0       (q, k, v projections)
  layout                    258    7.9 %  50 / 108 / 99
  matmul bkgts,bskd->btkgd  112    3.5 %  32 / 80 / 0        (attention · values)
  matmul bthk,hkd->btd       87    2.7 %  22 / 65 / 0        (attention out)
  matmul btkgd,bskd->bkgts   79    2.4 %  33 / 46 / 0        (scores)
  matmul btd,vd->btv         78    2.4 %  28 / 50 / 0        (unembedding)
  reduction, softmax / exp   46    1.4 %

Element-wise work takes 41 %, most of it in the backward: the largest single operations are the
backward ``add_any`` loop fusions (residual-gradient sums recomputed across layers, written
transposed for the next weight-gradient matmul) of 48–84 ms each — and the MLP weight gradients ran
as matmuls with both operands transposed outside XLA:CPU's fast (YNNPACK) path, at about half the
matmul peak (37–43 ms per layer against 22 ms for the same contraction written ``x,g->w``): JAX
transposes a contraction as ``g,x->wᵀ`` followed by a transpose, which XLA folds into the dot.

After (``superpose.nn.layers.projection``: every projection differentiated by its own einsums,
``out,w->x`` and ``x,out->w``; ``mlp.gelu_tanh`` through its closed-form derivative; same math,
gradients equal to autodiff's bit for bit in tests/nn/test_layers.py), same machine, wall 2.79 s
under the profiler (2.42–2.47 s in the timed rounds below):

  kind                       ms   share  forward / backward / rest ms
  element-wise             1081   37.6 %  744 / 308 / 30
  matmuls (all)            1461   50.8 %  the MLP weight gradients (btd,btf->df, btf,btd->fd) now
                                          117 and 134 ms over 6 layers, ≈ 20 ms per matmul
  layout                    276    9.6 %  82 / 113 / 81
  reduction, softmax / exp   60    2.1 %

Backward element-wise work fell from 781 to 308 ms; the forward's rose from 523 to 744 ms, since it
now also writes the activations transposed for the weight-gradient matmuls (the largest forward
operations: the GELU's tanh fusions, 32–59 ms, and bias / residual adds, 34–43 ms). Before → after,
this script run from each checkout in interleaved processes (2 rounds each, 3 rounds × 3 steps per
process, MFU against each process's own peak, 187–213 GFLOP/s): L6 d512 683 / 687 → 830 / 848
tokens/s (MFU 47.7 / 43.4 % → 52.0 / 55.2 %); ``--size small`` (L4 d256) 3,263 / 3,030 → 3,685 /
3,371 tokens/s (MFU 34.6 / 35.1 % → 38.1 / 35.8 %). Tried and not kept (medians of 4–6 ABBA
rounds in one process): ``scan_layers=True`` on top, 2,671 → 2,595 ms (−3 %, within the rounds'
spread; the scan adds zero-filled stacked residual buffers and copies of the optimizer's second
moments); ``remat='dots'`` 2,671 → 2,754 ms; the non-finite guard as a ``lax.cond`` around the
update instead of a select over the state: 2,600 → 2,558 ms with the scan, 2,727 → 2,773 ms
without. The select makes XLA copy every Adam moment before the in-place update (202 copies,
≈ 69 ms of layout work outside differentiation); the ``cond`` removes them (9 ms) but XLA:CPU runs
the conditional's body with gaps between its operations (profiled: busy 2,498 → 2,322 ms, wall
2,389 → 2,567 ms) — an optimizer that applies the guard as scalar coefficients (β = 1, lr = 0 on a
non-finite step) would keep both; the weight-gradient matmul with the
smaller operand transposed (an optimization barrier and a transposed result): slower, backward
element-wise 308 → 623 ms.

Second round (2026-12-08, same machine). Three changes, each measured in one process against the
step without it, alternating single steps (median speed-up with the quartiles of 10–30 steps;
``benchmarks/step_ablation.py`` runs these comparisons):

* causal blocks (``model.causal_block``, 64; superpose.nn.attention): causal self-attention takes
  its queries in blocks of 64 rows, each scoring only the keys up to its last row — the masked
  part of the score, softmax and probs · values work is skipped, the result the same up to the
  order of the softmax sums. L4 d256 1.124 [1.075, 1.175] (blocks of 128: 1.076, of 32: 1.079);
  L6 d512 1.046 [1.019, 1.071] (128: 1.031). The FLOP count above already counts causal
  attention at half, so MFU is not flattered by the skipped work.
* matmuls over merged token dimensions (superpose.nn.layers.projection): ``btd,btf->df`` runs as
  ``(bt)d,(bt)f->df``, ``btd,df->btf`` as ``(bt)d,df->(bt)f``. For a contraction over two
  dimensions XLA:CPU writes an operand transposed inside the element-wise fusion that produces it,
  a loop at ≈ 1.4 GB/s (the GELU output's transposed copy took 18–30 ms per layer at d256); over
  one it runs Eigen's transposed-operand matmul on the operand as it is. L4 d256 1.093
  [1.072, 1.136]; L6 d512 1.060 [1.050, 1.096]. Gradients still bit-equal to autodiff's.
* accuracy without an argmax (superpose.train.losses.argmax_hits): XLA:CPU's index-carrying
  argmax reduction took 4.9 ms at 8 × 256 × 1024 and 19.1 ms at V 4096; one max and one masked
  any take 0.6 / 2.7 ms, same result (first maximum on ties).

Before (5c11924) → after, this script from each checkout in alternating processes (2 each, 3
rounds × 3 steps per process, MFU against each process's own measured peak, 200–216 GFLOP/s):
L4 d256 3,873 / 4,068 → **4,999 / 4,829 tokens/s**, MFU 40.5 / 42.3 % → **51.0 / 50.8 %**; L6 d512
856 / 894 → **1,059 / 1,028 tokens/s**, MFU 55.9 / 55.7 % → **65.4 / 62.7 %**. ``--profile`` at
L6 after (busy 1,947 ms): element-wise 510 ms (26 %; 1,081 ms, 38 % before this round), layout
132 ms (276), matmuls 1,271 ms (65 % of the busy time; 51 %), reductions 21, softmax 13. The
largest single operations are now matmuls: the MLP-out weight gradient ``af,ad->fd`` (Eigen,
transposed operand, 27–45 ms per layer) and the unembedding's. The project-size models (one
process, the three changes off vs on, 30 alternating steps): ICL llama L3 d96 H6 T88 B16 1.101
[1.037, 1.141] (re-runs with step_ablation.py 1.067 and 1.073: the causal blocks' gain — at d96
the merged token dimensions are neutral, "unmerged" alone 1.106 [1.085, 1.146]); CoT gpt2 L2
d128 RoPE T96 B64 1.165 [1.136, 1.192].

Tried in this round and not kept (same in-process comparison): an AdamW taking the non-finite
guard as scalar coefficients (gradient 0, decays 1, step size 0 on a skipped step; no select over
the state): 1.004 at L4, 1.001 at L6 — the moment copies the select forces no longer cost
anything measurable; attention in heads-major layout (q, k, v transposed once to b·k·t·d): 0.998;
the weight gradient with the smaller operand transposed (result transposed back): 1.031 at L4,
0.992 at L6; XLA:CPU options (``compiler_options``): ``xla_cpu_prefer_vector_width=512`` 0.965,
YNNPACK element-wise fusions 0.910, the concurrency-optimized scheduler 0.927, YNNPACK off
1.004. Step times of the same code vary by up to 13 % between processes on this machine (2,131 to
2,408 ms at L6 with causal blocks alone), which is why every comparison above is made inside one
process.

bf16 compute (parameters and optimizer f32; ``--dtype both``, one process per size, 4 ABBA rounds
× 3 steps, 2026-12-07): this CPU (AMD EPYC, avx512_bf16) multiplies bf16 at 362–383 GFLOP/s
against 175–211 GFLOP/s in f32. L6 d512: 818 → 1,002 tokens/s, speed-up 1.24 [rounds 1.14–1.41]
(MFU 50.6 % in f32; bf16 36.1 % of the bf16 peak, 62.0 % of the f32 one); L4 d256: 3,375 → 3,644
tokens/s, 1.10 [0.98–1.17] (40.7 %; bf16 20.9 % / 44.0 %). The default job (configs/lm/tiny.py,
L4 d192, 500 steps) with ``--config.model.dtype=bfloat16``: validation loss 2.0764 against 2.0445
in f32, 5,762 against 5,823 tokens/s — slower and worse there, so f32 stays the default; bf16 is a
config key (``model.dtype``) for the larger shapes where it is faster.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from superpose import nn
from superpose.train import (
  flops,
  optim,
  profile as profile_lib,
  state as state_lib,
  step as step_lib,
)
from superpose.train.losses import lm_loss
from superpose.train.mesh import make_mesh

L, D, H, T, B, V = 6, 512, 8, 256, 8, 4096
DTYPE = "float32"
SIZES = {
  "default": (6, 512, 8, 256, 8, 4096, "float32"),
  "small": (4, 256, 4, 256, 8, 1024, "float32"),
  "350m": (24, 1024, 16, 1024, 8, 50304, "bfloat16"),
}


def matmul_peak(sizes=(2048, 4096), repeats=5, dtype="float32") -> float:
  best = 0.0
  for n in sizes:
    x = jax.random.normal(jax.random.key(n), (n, n), dtype).block_until_ready()
    f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
    f(x).block_until_ready()
    for _ in range(repeats):
      t = time.perf_counter()
      f(x).block_until_ready()
      best = max(best, 2 * n**3 / (time.perf_counter() - t))
  return best


def batches(n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    rows = rng.integers(0, V, (B, T + 1), dtype=np.int32)
    out.append(
      {"inputs": rows[:, :-1], "targets": rows[:, 1:], "weights": np.ones((B, T), np.float32)}
    )
  return out


def loss_fn(model, batch):
  return lm_loss(model(batch["inputs"]).logits_BTV, batch["targets"], batch["weights"])


OPTIM = {"lr": 1e-3, "warmup_steps": 10, "weight_decay": 0.1, "clip_norm": 1.0}


def superpose_runner(cfg, mesh):
  make = lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0))
  graphdef, abs_params, _ = state_lib.split_model(make, mesh)
  tx, _ = optim.make_optimizer(OPTIM, abs_params, 1000)
  state, state_sh = state_lib.create(make, tx, abs_params, mesh)
  batch_sh = {k: NamedSharding(mesh, P()) for k in ("inputs", "targets", "weights")}
  step = step_lib.jit_train_step(
    step_lib.make_train_step(graphdef, loss_fn, tx), state_sh, batch_sh
  )
  holder = {"state": state}

  def profile(host):
    """The step's time by kind of work and phase (superpose.train.profile), on one host batch."""
    batch = {
      k: jax.make_array_from_process_local_data(batch_sh[k], v, v.shape) for k, v in host.items()
    }

    def advance(out):
      holder["state"] = out[0]
      return out[0], batch

    return profile_lib.breakdown(step, holder["state"], batch, advance=advance)

  def run(host_batches):
    pending = None
    for host in host_batches:
      batch = {
        k: jax.make_array_from_process_local_data(batch_sh[k], v, v.shape) for k, v in host.items()
      }
      holder["state"], metrics = step(holder["state"], batch)
      if pending is not None:
        float(pending["loss"])  # the loop fetches the previous step's metrics
      pending = metrics
    jax.block_until_ready(holder["state"])
    return float(pending["loss"])

  run.profile = profile
  return run


def plain_runner(cfg):
  graphdef, params = nnx.split(nn.Transformer(cfg, rngs=nnx.Rngs(0)))
  tx, _ = optim.make_optimizer(OPTIM, params, 1000)
  holder = {"params": params, "opt": tx.init(params)}

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), batch)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def run(host_batches):
    loss = None
    for host in host_batches:
      holder["params"], holder["opt"], loss = step(holder["params"], holder["opt"], host)
    jax.block_until_ready(holder["params"])
    return float(loss)

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=4, help="train steps per timed block")
  parser.add_argument("--size", choices=tuple(SIZES), default="default")
  parser.add_argument("--force", action="store_true", help="run --size 350m on a CPU too")
  parser.add_argument(
    "--dtype",
    choices=("float32", "bfloat16", "both"),
    default=None,
    help="compute dtype (parameters stay f32); 'both': superpose's step in f32 and in bf16 side "
    "by side, MFU of each against the measured matmul peak of its dtype (default: the size's)",
  )
  parser.add_argument(
    "--profile", action="store_true", help="print where superpose's step time goes, then exit"
  )
  args = parser.parse_args()

  global L, D, H, T, B, V, DTYPE
  device = jax.devices()[0]
  print(
    f"device: {device.device_kind} ({device.platform}), {jax.local_device_count()} local "
    "device(s); "
    f"jax {jax.__version__}"
  )
  size = args.size
  if size == "350m" and device.platform == "cpu" and not args.force:
    print(
      f"--size {size} is the accelerator benchmark; this is a CPU, so the default shape runs "
      "(--force to override)"
    )
    size = "default"
  L, D, H, T, B, V, DTYPE = SIZES[size]
  both = args.dtype == "both"
  if args.dtype and not both:
    DTYPE = args.dtype
  model = lambda dtype: nn.gpt2(
    vocab_size=V, d_model=D, num_layers=L, num_heads=H, max_seq_len=T, d_ff=4 * D, dtype=dtype
  )
  cfg = model("float32" if both else DTYPE)
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  flops_per_step = flops.train_flops_per_token(cfg, T) * B * T
  peak_dtypes = ("float32", "bfloat16") if both else ("float32",)
  peak_before = {dt: matmul_peak(dtype=dt) for dt in peak_dtypes}
  for dt, p in peak_before.items():
    print(f"{dt} matmul peak (best of 2048³, 4096³, f32 accumulation): {p / 1e9:.0f} GFLOP/s")

  with jax.set_mesh(mesh):
    data = batches(args.steps)
    if args.profile:  # superpose's step alone: the plain one is not compiled
      print(superpose_runner(cfg, mesh).profile(data[0]).table())
      return
    runners = {"superpose": superpose_runner(cfg, mesh)}
    if both:
      runners["superpose bf16"] = superpose_runner(model("bfloat16"), mesh)
    runners["plain jit"] = plain_runner(cfg)
    for run in runners.values():  # compile and warm up
      run(data[:2])
    times = {name: [] for name in runners}
    for r in range(args.rounds):
      order = list(runners) if r % 2 == 0 else list(reversed(runners))
      for name in order:
        t0 = time.perf_counter()
        runners[name](data)
        times[name].append((time.perf_counter() - t0) / args.steps)
  peaks = {dt: max(p, matmul_peak(dtype=dt)) for dt, p in peak_before.items()}
  peak = peaks["float32"]
  if device.platform != "cpu":
    table_peak, source = flops.device_peak_flops(device)
    if table_peak == table_peak:  # known chip: MFU against its bf16 dense peak
      peak = table_peak
      print(f"MFU against the {source}: {peak / 1e12:.0f} TFLOP/s")

  print(
    f"model: L{L} d{D} H{H} T{T} B{B} V{V} {'float32 and bfloat16' if both else DTYPE}, "
    f"{flops_per_step / 1e9:.1f} GFLOP per step "
    "(6N + 6·L·T·D, N incl. unembedding)"
  )
  for name, ts in times.items():
    step_time = statistics.median(ts)
    own = peaks["bfloat16"] if name.endswith("bf16") and device.platform == "cpu" else peak
    print(
      f"{name:>14}: {step_time * 1e3:7.1f} ms/step  {B * T / step_time:8.0f} tokens/s  "
      f"MFU {flops_per_step / step_time / own:5.1%}"
      + (
        f" of the bf16 peak, {flops_per_step / step_time / peak:5.1%} of f32's"
        if own != peak
        else ""
      )
    )
  if both:
    r = [f / b for f, b in zip(times["superpose"], times["superpose bf16"])]
    print(
      f"bf16 speed-up (f32 / bf16 step time, median of {args.rounds} rounds): "
      f"{statistics.median(r):.3f}  [min {min(r):.3f}, max {max(r):.3f}]"
    )
  ratios = [p / s for p, s in zip(times["plain jit"], times["superpose"])]
  print(
    f"overhead ratio (plain / superpose step time, median of {args.rounds} rounds): "
    f"{statistics.median(ratios):.3f}  [min {min(ratios):.3f}, max {max(ratios):.3f}]"
  )
  print(
    f"peak used for MFU: {peak / 1e9:.0f} GFLOP/s"
    + (f" (f32), {peaks['bfloat16'] / 1e9:.0f} GFLOP/s (bf16)" if both else "")
    + (" (best of the measurements before and after)" if device.platform == "cpu" else "")
  )


if __name__ == "__main__":
  main()
