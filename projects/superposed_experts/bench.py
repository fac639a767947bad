"""Inference speed of every method vs one expert: tokens/s of jitted forwards at fixed shapes, side
by side.

    python -m projects.superposed_experts.bench --workdir DIR [--rounds 7] [--steps 4]   # a \\
        pipeline's methods
    python -m projects.superposed_experts.bench [--sizes tiny,medium] [--rounds 7] [--steps 4]

``--workdir`` (what pipeline.py runs): every learned run of the pipeline's first seed (built from
its own config with random weights — speed does not depend on the values), the ensemble of the K
experts (their forwards plus the mixture of their target probabilities: every output-space mixture
costs this) and one expert, timed in one process; writes ``DIR/bench.json`` with each method's
median per-round time per token ÷ one expert's (``cost_ratio``; each round times the method beside
one expert in ABBA order), which evaluate.py puts in the cost column.

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
  "medium": (
    dict(vocab_size=4096, d_model=512, num_layers=6, num_heads=8, d_ff=2048),
    8,
    256,
    (1, 2, 3, 4),
  ),
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
    if name.startswith("blend/"):  # α ≈ 0.5: both experts matter
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
  for fn, s in runners.values():  # compile and warm up
    jax.block_until_ready(fn(s, tokens))
    jax.block_until_ready(fn(s, tokens))
  times = {name: [] for name in runners}
  for r in range(rounds):
    for name in list(runners) if r % 2 == 0 else list(reversed(runners)):
      fn, s = runners[name]
      times[name].append(timed(fn, s, tokens, steps=steps))
  n = tokens.size
  ratios = [single_t / sup_t for single_t, sup_t in zip(times["single"], times["superposed"])]
  return {
    "size": size,
    "shape": tuple(tokens.shape),
    "ae_layers": SIZES[size][3],
    "superposed_tok_s": n / statistics.median(times["superposed"]),
    "single_tok_s": n / statistics.median(times["single"]),
    "ratio": statistics.median(ratios),
    "ratio_min": min(ratios),
    "ratio_max": max(ratios),
  }


def _filled(module_factory, seed: int = 0, scale: float = 0.02):
  """(graphdef, state) of a module with numpy-drawn weights (no PRNG compiles)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(module_factory))
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    centre = 1.0 if name.endswith("scale") else 0.5 if name.startswith("blend/") else 0.0
    return jnp.asarray(centre + scale * rng.standard_normal(a.shape), a.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(fill, abstract)


def paired_ratios(
  runners: dict, tokens, rounds: int, steps: int, reference: str = "single", seed: int = 0
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
  """(per-round time ratios to ``reference``, per-call seconds) of every runner, each round timing
  every method right beside the reference in ABBA order (reference, method, method, reference) and
  the methods in a fresh random order: a drift of the machine's speed (another tenant, the clock)
  hits a method and the reference it is divided by alike, where one long pass over all methods lets
  it bias the methods timed early against those timed late."""
  for fn, s in runners.values():  # compile and warm up
    jax.block_until_ready(fn(s, tokens))
    jax.block_until_ready(fn(s, tokens))
  rng = np.random.default_rng(seed)
  ratios = {name: [] for name in runners if name != reference}
  seconds = {name: [] for name in runners}
  ref_fn, ref_s = runners[reference]
  for _ in range(rounds):
    for name in rng.permutation(list(ratios)):
      fn, s = runners[name]
      a = timed(ref_fn, ref_s, tokens, steps=steps)
      m = timed(fn, s, tokens, steps=steps) + timed(fn, s, tokens, steps=steps)
      a += timed(ref_fn, ref_s, tokens, steps=steps)
      ratios[name].append(m / a)
      seconds[name].append(m / 2)
      seconds[reference].append(a / 2)
  return ratios, seconds


def bench_pipeline(workdir, rounds: int = 9, steps: int = 4, batch: int = 16, log=print) -> dict:
  """Times the methods of ``workdir/pipeline.json`` (module docstring); writes and returns
  bench.json."""
  import json
  import pathlib
  from projects.superposed_experts import train as sx_train
  from superpose.train import checkpoint as ckpt_lib

  workdir = pathlib.Path(workdir)
  layout = json.loads((workdir / "pipeline.json").read_text("utf-8"))
  runs = next(iter(layout["seeds"].values()))
  K, seq_len = len(layout["domains"]), int(layout["seq_len"])
  tasks = {
    name: sx_train.SuperposedSpec(ckpt_lib.run_config(path))
    for name, path in runs["learned"].items()
  }
  expert_cfg = next(iter(tasks.values())).model_cfg.expert
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, expert_cfg.vocab_size, (batch, seq_len)), jnp.int32)
  targets = jnp.roll(tokens, -1, axis=1)
  single_g, single_s = nnx.split(random_model(expert_cfg, seed=1, scale=0.02))
  runners = {"single": (jax.jit(lambda s, t: nnx.merge(single_g, s)(t).logits_BTV), single_s)}
  ens_states = [nnx.split(random_model(expert_cfg, seed=2 + k, scale=0.02))[1] for k in range(K)]

  def ensemble(states, t):  # K forwards and the mixture of their target probabilities
    logps = [jax.nn.log_softmax(nnx.merge(single_g, s)(t).logits_BTV, -1) for s in states]
    picked = jnp.stack([jnp.take_along_axis(lp, targets[..., None], -1)[..., 0] for lp in logps])
    return jax.nn.logsumexp(picked - jnp.log(K), axis=0)

  runners["ensemble"] = (jax.jit(ensemble), ens_states)
  for name, task in tasks.items():
    graphdef, state = _filled(task.make_model, seed=10)
    if task.method == "merge":  # inference runs the merged transformer
      merged = nnx.merge(graphdef, state).merged_model()
      mg, ms = nnx.split(merged)
      runners[name] = (jax.jit(lambda s, t, mg=mg: nnx.merge(mg, s)(t).logits_BTV), ms)
    else:
      runners[name] = (jax.jit(lambda s, t, g=graphdef: nnx.merge(g, s)(t)), state)
  paired, times = paired_ratios(runners, tokens, rounds, steps)
  out = {
    "device": jax.devices()[0].device_kind,
    "jax": jax.__version__,
    "shape": [batch, seq_len],
    "rounds": rounds,
    "steps": steps,
    "single_tok_s": tokens.size / statistics.median(times["single"]),
    "timing": "per round: one expert, the method twice, one expert (ABBA), methods in random order",
    "methods": {},
  }
  for name in runners:
    ratios = paired.get(name, [1.0] * rounds)
    out["methods"][name] = {
      "tok_s": tokens.size / statistics.median(times[name]),
      "cost_ratio": statistics.median(ratios),
      "cost_ratio_min": min(ratios),
      "cost_ratio_max": max(ratios),
    }
    log(
      f"  bench {name:>18}: {out['methods'][name]['tok_s']:>9,.0f} tok/s, time per token ÷ one "
      "expert's "
      f"{statistics.median(ratios):.3f} [min {min(ratios):.3f}, max {max(ratios):.3f}]"
    )
  (workdir / "bench.json").write_text(json.dumps(out, indent=1) + "\n", "utf-8")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", help="a pipeline workdir: time its methods, write bench.json")
  parser.add_argument(
    "--sizes",
    default=None,
    help=f"comma-separated of {', '.join(SIZES)} "
    "(default: tiny,medium on CPU; tiny,medium,gpt2 on accelerators)",
  )
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=4, help="forwards per timed block")
  args = parser.parse_args()
  if args.workdir:
    bench_pipeline(args.workdir, args.rounds, args.steps)
    return
  device = jax.devices()[0]
  sizes = (
    args.sizes.split(",")
    if args.sizes
    else (["tiny", "medium"] if device.platform == "cpu" else ["tiny", "medium", "gpt2"])
  )
  print(
    f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}; f32; "
    f"{args.rounds} rounds × {args.steps} forwards"
  )
  for size in sizes:
    r = bench(size, args.rounds, args.steps)
    overrides = SIZES[size][0]
    print(
      f"{size:>6}: B×T {r['shape'][0]}×{r['shape'][1]}, L{overrides.get('num_layers', 12)} "
      f"d{overrides.get('d_model', 768)} V{overrides.get('vocab_size', 50257)}, AEs at "
      f"{list(r['ae_layers'])}: "
      f"superposed {r['superposed_tok_s']:,.0f} tok/s, single {r['single_tok_s']:,.0f} tok/s, "
      f"ratio {r['ratio']:.3f} [min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f}]"
    )


if __name__ == "__main__":
  main()
