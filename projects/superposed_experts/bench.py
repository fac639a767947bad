"""Superposed inference vs one expert: tokens/s of jitted forwards at fixed shapes, side by side.

    python -m projects.superposed_experts.bench [--sizes tiny,medium] [--rounds 7] [--steps 4]

For each size, one run builds a K = 2 superposed model (learned 1-D α, causal conv autoencoders at
the size's ``ae_layers``, both experts running every layer) and a single expert of the same
architecture, compiles both forwards, then times them in alternating rounds (ABBA order) and
reports the medians of per-round tokens/s and of the per-round ratio superposed / single. Two
experts cost at least 2× one in block FLOPs, so the ideal ratio is a little under 0.5 (the head is
shared; the autoencoders and blends add work); the target is ≥ 0.45.

Sizes: tiny = configs/superposed_experts/tiny.py (L4 d128 T128 B16 V257); medium = the LM step
benchmark's shape (L6 d512 T256 B8 V4096); gpt2 = GPT-2 small with the paper's AE layers 2..10
(L12 d768 T128 B8 V50257), for accelerators.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose import nn
from superpose.nn.testing import random_model
from projects.superposed_experts.model import Superposed, SuperposedConfig

SIZES = {
    # name: (model overrides, batch, seq_len, ae_layers)
    "tiny": (dict(vocab_size=257, d_model=128, num_layers=4, num_heads=4, d_ff=512), 16, 128, (1, 2)),
    "medium": (dict(vocab_size=4096, d_model=512, num_layers=6, num_heads=8, d_ff=2048), 8, 256, (1, 2, 3, 4)),
    "gpt2": (dict(), 8, 128, tuple(range(2, 11))),
}


def build(size: str, scale: float = 0.02):
  """(superposed graphdef, state, expert graphdef, state, tokens) with numpy-drawn weights."""
  overrides, batch, seq_len, ae_layers = SIZES[size]
  expert_cfg = nn.gpt2(max_seq_len=seq_len, **overrides)
  cfg = SuperposedConfig(expert=expert_cfg, ae_layers=ae_layers)
  model = nnx.eval_shape(lambda: Superposed(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract = nnx.split(model)
  rng = np.random.default_rng(0)

  def fill(path, a):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name.startswith("blend/"):   # α ≈ 0.5: both experts matter
      return jnp.asarray(rng.uniform(0.45, 0.55, a.shape), a.dtype)
    centre = 1.0 if name.endswith("scale") else 0.0
    return jnp.asarray(centre + scale * rng.standard_normal(a.shape), a.dtype)
  state = jax.tree_util.tree_map_with_path(fill, abstract)
  single_graphdef, single_state = nnx.split(random_model(expert_cfg, seed=1, scale=scale))
  tokens = jnp.asarray(rng.integers(0, expert_cfg.vocab_size, (batch, seq_len)), jnp.int32)
  return graphdef, state, single_graphdef, single_state, tokens


def timed(fn, *args, steps: int) -> float:
  """Seconds per call over ``steps`` back-to-back calls (results awaited once at the end)."""
  t0 = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps


def bench(size: str, rounds: int, steps: int) -> dict:
  graphdef, state, single_graphdef, single_state, tokens = build(size)
  superposed = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
  single = jax.jit(lambda s, t: nnx.merge(single_graphdef, s)(t).logits_BTV)
  runners = {"superposed": (superposed, state), "single": (single, single_state)}
  for fn, s in runners.values():   # compile and warm up
    jax.block_until_ready(fn(s, tokens))
    jax.block_until_ready(fn(s, tokens))
  times = {name: [] for name in runners}
  for r in range(rounds):
    for name in (list(runners) if r % 2 == 0 else list(reversed(runners))):
      fn, s = runners[name]
      times[name].append(timed(fn, s, tokens, steps=steps))
  n = tokens.size
  ratios = [single_t / sup_t for single_t, sup_t in zip(times["single"], times["superposed"])]
  return {"size": size, "shape": tuple(tokens.shape), "ae_layers": SIZES[size][3],
          "superposed_tok_s": n / statistics.median(times["superposed"]),
          "single_tok_s": n / statistics.median(times["single"]),
          "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default=None, help=f"comma-separated of {', '.join(SIZES)} "
                      "(default: tiny,medium on CPU; tiny,medium,gpt2 on accelerators)")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=4, help="forwards per timed block")
  args = parser.parse_args()
  device = jax.devices()[0]
  sizes = args.sizes.split(",") if args.sizes else (
      ["tiny", "medium"] if device.platform == "cpu" else ["tiny", "medium", "gpt2"])
  print(f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}; f32; "
        f"{args.rounds} rounds × {args.steps} forwards")
  for size in sizes:
    r = bench(size, args.rounds, args.steps)
    overrides = SIZES[size][0]
    print(f"{size:>6}: B×T {r['shape'][0]}×{r['shape'][1]}, L{overrides.get('num_layers', 12)} "
          f"d{overrides.get('d_model', 768)} V{overrides.get('vocab_size', 50257)}, AEs at {list(r['ae_layers'])}: "
          f"superposed {r['superposed_tok_s']:,.0f} tok/s, single {r['single_tok_s']:,.0f} tok/s, "
          f"ratio {r['ratio']:.3f} [min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f}]")


if __name__ == "__main__":
  main()
