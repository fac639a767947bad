"""One train step with and without each of issue 24's second-round changes, in one process.

    python benchmarks/step_ablation.py --size small --variants before,base --steps 30
    python benchmarks/step_ablation.py --size default --variants causal_block=0,base,unmerged
    python benchmarks/step_ablation.py --size icl --variants before,base  # and --size cot

Each variant is superpose's train step as lm_step.py runs it (its model, loss, optimizer and runner:
host batch → global array → jitted step) compiled with one change; the variants then run one step
each in turn (order reversed every round), so that
the machine's drift between processes (up to 13 % here) falls on all of them alike. Prints each
variant's median step time and tokens/s, and its speed-up over the first variant: the median of the
per-round ratios with their quartiles.

Variants: ``base`` (the code as it is); ``before`` (all three changes off: one query block, einsums
over the token dimensions as written, accuracy by argmax); each change off alone: ``causal_block=0``
(one query block; any ``KEY=VALUE`` sets a model config field), ``unmerged`` (projection einsums as
written), ``argmax`` (accuracy by ``argmax``).
Sizes: ``default`` / ``small`` (lm_step's), ``icl`` (llama L3 d96 H6 T88 B16, the ICL model),
``cot`` (gpt2 L2 d128 RoPE T96 B64, the continuous-CoT model).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import jax
import jax.numpy as jnp
import lm_step

from superpose import nn
from superpose.nn import layers
from superpose.train import losses
from superpose.train.mesh import make_mesh

SIZES = {  # preset, (L, D, H, T, B, V), extra fields
  "default": (nn.gpt2, lm_step.SIZES["default"][:6], {}),
  "small": (nn.gpt2, lm_step.SIZES["small"][:6], {}),
  "icl": (nn.llama, (3, 96, 6, 88, 16, 99), {"d_ff": 384, "num_kv_heads": 6}),
  "cot": (nn.gpt2, (2, 128, 4, 96, 64, 40), {"d_ff": 512, "positions": "rope"}),
}


@contextlib.contextmanager
def _changes_off(unmerged: bool, argmax: bool):
  saved = layers._matmul_einsum, losses.argmax_hits
  if unmerged:
    layers._matmul_einsum = lambda eq, a, b: jnp.einsum(
      eq.replace(" ", ""), a, b, preferred_element_type=jnp.float32
    )
  if argmax:
    losses.argmax_hits = lambda logits, targets: logits.argmax(-1) == targets
  try:
    yield
  finally:
    layers._matmul_einsum, losses.argmax_hits = saved


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=tuple(SIZES), default="small")
  parser.add_argument("--variants", default="before,base")
  parser.add_argument("--steps", type=int, default=20, help="rounds of one step per variant")
  args = parser.parse_args()
  preset, (L, D, H, T, B, V), extra = SIZES[args.size]
  lm_step.T, lm_step.B, lm_step.V = T, B, V  # lm_step.batches draws with these
  shape = dict(vocab_size=V, d_model=D, num_layers=L, num_heads=H, max_seq_len=T, d_ff=4 * D)
  base_cfg = preset(**{**shape, "dtype": "float32", **extra})
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  runs = {}
  with jax.set_mesh(mesh):
    host = lm_step.batches(3)
    for name in args.variants.split(","):
      cfg, off = base_cfg, {"unmerged": False, "argmax": False}
      if name == "before":
        cfg, off = cfg.replace(causal_block=0), {"unmerged": True, "argmax": True}
      elif name in off:
        off[name] = True
      elif "=" in name:
        key, value = name.split("=", 1)
        cfg = cfg.replace(**{key: type(getattr(cfg, key))(value)})
      elif name != "base":
        parser.error(f"unknown variant {name!r}")
      runs[name] = lm_step.superpose_runner(cfg, mesh)
      with _changes_off(**off):  # the step is traced and compiled at its first call
        runs[name](host[:1])
    times = {name: [] for name in runs}
    for r in range(args.steps):
      for name in runs if r % 2 == 0 else reversed(runs):
        t0 = time.perf_counter()
        runs[name]([host[r % 3]])
        times[name].append(time.perf_counter() - t0)
  first = times[next(iter(times))]
  print(f"{args.size}: L{L} d{D} H{H} T{T} B{B} V{V}, {args.steps} rounds")
  for name, ts in times.items():
    ratios = sorted(a / b for a, b in zip(first, ts))
    q = lambda p: ratios[round(p * (len(ratios) - 1))]
    med = statistics.median(ts)
    print(
      f"{name:>18}: {med * 1e3:8.1f} ms/step {B * T / med:8.0f} tokens/s  speed-up "
      f"{statistics.median(ratios):.3f} [quartiles {q(0.25):.3f}, {q(0.75):.3f}]"
    )


if __name__ == "__main__":
  main()
