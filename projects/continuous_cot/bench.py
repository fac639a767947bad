"""Side-by-side speed checks in one run: KV-cached thoughts vs a full re-forward (default), or the
training step's real tokens/s, the previous padded-to-T path vs the bucketed compact one
(``--train``).

    python -m projects.continuous_cot.bench [--size small|d128|tiny|medium|paper] [--batch 32] \\
        [--thoughts 4] [--prompt 80:160] [--rest 2] [--rounds 7] [--steps 3]
    python -m projects.continuous_cot.bench --train [--size small] [--batch 32] \\
        [--method coconut] [--stage final|0] [--problems 2000] [--window 32] [--steps 8] \\
        [--rounds 4] [--data DIR] [--profile]

Forward (default): ProsQA-shaped batches, each row a prompt of random length in ``--prompt lo:hi``
tokens (the released graph_4 test prompts average 113 tokens, max 167), ``--thoughts`` latent slots
and ``--rest`` tokens after them, right-padded to T = hi + thoughts + rest. The cached method runs
with the static bounds ``prefix_len = hi``, ``rest_len = rest``; the reference re-reads all T
columns ``thoughts + 1`` times. Both are compiled and checked against each other before timing.

``--train``: the trainer's own rows and train step (value and gradient through the thoughts plus the
AdamW update of ``configs/continuous_cot/scaled.py``) on generated problems (``--problems``, 3–4
hops, ids shuffled; or ``--data DIR/train.json``), at the model ``--size`` and batch ``--batch``:

* ``old``: the previous path, ``cot.batching='padded'``: every row padded to T (the longest prompt
  of the data rounded up to 8, + U thought slots + 2), the full KV-cached forward over all T
  columns;
* ``new``: ``cot.batching='bucketed'``: length-bucketed batches (windows of ``--window`` batches
  sorted by prompt length) and the compact forward (the last layer only where a loss can be).

Both run the *same rows in the same batches*: the first ``--steps`` steps of the bucketed order (the
window after the first, so that ``--stage final`` rows are all at the final stage, earlier stages
mixed in with probability 0.1; ``--stage 0``: stage-0 rows, no thoughts), the old path with those
rows padded to T. So both process the same real tokens (prompt, thoughts, answer tokens; no padding)
and the ratio of real tokens/s is the ratio of step times. Every step starts from the same
parameters; each shape is compiled before timing (compile times reported, excluded). Rounds
alternate the order (ABBA) so that machine-speed drift cancels in the per-round ratio; the report
gives medians. Before timing, the summed cross-entropy of all steps is checked equal between the two
paths. ``--profile`` also traces the new step and prints where its time goes (matmuls, element-wise,
copies/transposes, the thought loop).
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import pathlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from projects.continuous_cot import data as data_lib
from projects.continuous_cot import thoughts as th
from superpose.nn.testing import random_model

VOCAB = 40
METHODS = ("cached", "reforward")
PATHS = ("old", "new")


def make_batch(batch: int, prompt: tuple[int, int], num_thoughts: int, rest: int, seed: int = 0):
  """(tokens_BT, latent_start_B, lengths_B): right-padded rows of different prompt lengths."""
  rng = np.random.default_rng(seed)
  lo, hi = prompt
  width = hi + num_thoughts + rest
  starts = rng.integers(lo, hi + 1, batch).astype(np.int32)
  tokens = rng.integers(0, VOCAB, (batch, width)).astype(np.int32)
  lengths = starts + num_thoughts + rest
  tokens[np.arange(width)[None] >= lengths[:, None]] = 0
  return tokens, starts, lengths


def _timed_rounds(calls: dict, rounds: int, measure) -> dict[str, list[float]]:
  """Per-round values of ``measure(name, seconds)``, the calls in ABBA order (reversed every other
  round)."""
  names = list(calls)
  out = {name: [] for name in names}
  for round_index in range(rounds):
    for name in names if round_index % 2 == 0 else names[::-1]:
      start = time.perf_counter()
      jax.block_until_ready(calls[name]())
      out[name].append(measure(name, time.perf_counter() - start))
  return out


# --- forward: cached vs re-forward ----------------------------------------------------------------
def forward_main(args) -> None:
  lo, hi = (int(x) for x in args.prompt.split(":"))
  num_thoughts, rest = args.thoughts, args.rest
  tokens, starts, lengths = make_batch(args.batch, (lo, hi), num_thoughts, rest)
  width = tokens.shape[1]
  cfg = th.model_config(args.size, vocab_size=VOCAB, max_seq_len=max(256, width))
  graphdef, state = nnx.split(random_model(cfg, seed=0, scale=0.02))
  prefix_len, rest_len = th.layout_bounds(starts, lengths, num_thoughts)
  th.check_layout(tokens.shape, starts, num_thoughts, prefix_len, rest_len, lengths)
  tokens_d, starts_d = jnp.asarray(tokens), jnp.asarray(starts)
  bounds = dict(num_thoughts=num_thoughts, prefix_len=prefix_len, rest_len=rest_len)

  def call(method):
    out = None
    for _ in range(args.steps):
      out = th.thought_forward(graphdef, state, tokens_d, starts_d, method=method, **bounds)
    return out

  compile_s, outs = {}, {}
  for method in METHODS:
    start = time.perf_counter()
    outs[method] = jax.block_until_ready(
      th.thought_forward(graphdef, state, tokens_d, starts_d, method=method, **bounds)
    )
    compile_s[method] = time.perf_counter() - start
  valid = np.arange(width)[None] < lengths[:, None]
  delta = np.abs(np.asarray(outs["cached"].logits_BTV) - np.asarray(outs["reforward"].logits_BTV))[
    valid
  ].max()
  rates = _timed_rounds(
    {m: functools.partial(call, m) for m in METHODS},
    args.rounds,
    lambda _, dt: args.batch * args.steps / dt,
  )
  ratios = [c / r for c, r in zip(rates["cached"], rates["reforward"])]

  _header(cfg, state)
  print(
    f"batch {args.batch}, prompt {lo}..{hi} tokens (mean {starts.mean():.1f}), {num_thoughts} "
    "thoughts, "
    f"{rest} after, padded width T={width}; cached bounds prefix_len={prefix_len} "
    f"rest_len={rest_len}"
  )
  print(
    f"mode: forward; {args.rounds} rounds x {args.steps} calls, ABBA; compile cached "
    f"{compile_s['cached']:.1f}s, "
    f"reforward {compile_s['reforward']:.1f}s (excluded); max |Δlogit| {delta:.1e}"
  )
  for method in METHODS:
    print(
      f"  {method:9s} {statistics.median(rates[method]):9.1f} questions/s (median; "
      f"min {min(rates[method]):.1f}, max {max(rates[method]):.1f})"
    )
  print(
    f"ratio cached / reforward: {statistics.median(ratios):.2f}x (median of per-round ratios; "
    f"min {min(ratios):.2f}, max {max(ratios):.2f}; target >= 3x)"
  )


def _header(cfg, state) -> None:
  device = jax.devices()[0]
  params = sum(x.size for x in jax.tree.leaves(state))
  print(
    f"device: {device.platform} {device.device_kind} (jax {jax.__version__}, {jax.device_count()} "
    "device(s))"
  )
  print(
    f"model: gpt2 L{cfg.num_layers} H{cfg.num_heads} d{cfg.d_model} d_ff {cfg.d_ff} "
    f"V{cfg.vocab_size}, "
    f"{params / 1e6:.2f}M params, f32"
  )


# --- train: the old padded path vs the new bucketed one -------------------------------------------
def train_tasks(args):
  """(old task, new task): the scaled config at ``--size``/``--batch``, one with each batching."""
  from configs.continuous_cot import scaled as scaled_cfg
  from projects.continuous_cot import train as train_lib
  from superpose.train.config import model_section

  if args.data:
    problems = data_lib.load(pathlib.Path(args.data) / "train.json", check=False)
  else:
    problems, _ = data_lib.generate_split(args.problems, 0)
  tasks = {}
  for path, batching in (("old", "padded"), ("new", "bucketed")):
    c = scaled_cfg.get_config(args.method)
    c.model = model_section(
      "gpt2", vocab_size=VOCAB, vocab_multiple=8, max_seq_len=256, **th.SIZES[args.size]
    )
    c.train.batch_size = args.batch
    # final: stage = step − 1 ≥ window from the second window on; 0: stage 0 throughout
    c.cot.update(
      dict(
        batching=batching,
        bucket_window=args.window,
        steps_per_stage=1 if args.stage == "final" else 10**9,
      )
    )
    tasks[path] = train_lib.make_task(c.to_dict(), train=problems, valid=problems[:8])
  return tasks["old"], tasks["new"]


def train_main(args) -> None:
  from superpose.train import optim, state as state_lib, step as step_lib

  old, new = train_tasks(args)
  steps = list(range(args.window + 1, args.window + 1 + args.steps))
  batches = {"new": [new.data.train_batch(s) for s in steps]}
  batches["old"] = []
  for s in steps:
    rows = [old.data.train_row(s, int(g), old.spec.T) for g in new.data.step_rows(s)]
    batches["old"].append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  real = sum(int(b["length"].sum()) for b in batches["new"])
  assert real == sum(int(b["length"].sum()) for b in batches["old"])
  pad = {p: 1 - real / sum(b["tokens"].size for b in batches[p]) for p in PATHS}
  widths = sorted({b["tokens"].shape[1] for b in batches["new"]})

  graphdef, params, _ = nnx.split(new.spec.make_model(), nnx.Param, ...)
  params = state_lib.pure_dict(params)
  tx, _ = optim.make_optimizer(new.spec.config["optim"], params, 1000)
  state = {"params": params, "opt_state": jax.jit(tx.init)(params), "step": jnp.int32(0)}
  tasks = {"old": old, "new": new}
  fns = {
    p: jax.jit(step_lib.make_train_step(graphdef, tasks[p].spec.train_loss, tx)) for p in PATHS
  }
  device_batches = {p: [jax.device_put(b) for b in batches[p]] for p in PATHS}

  compile_s, ce = {}, {}
  for p in PATHS:
    start, total = time.perf_counter(), 0.0
    for b, db in zip(batches[p], device_batches[p]):  # every shape compiled here, before timing
      total += float(fns[p](state, db)[1]["loss"]) * float(b["weights"].sum())
    compile_s[p], ce[p] = time.perf_counter() - start, total

  def call(p):
    out = None
    for db in device_batches[p]:
      out = fns[p](state, db)
    return out

  rates = _timed_rounds(
    {p: functools.partial(call, p) for p in PATHS}, args.rounds, lambda _, dt: real / dt
  )
  ratios = [n / o for n, o in zip(rates["new"], rates["old"])]

  cfg = new.spec.model_cfg
  _header(cfg, params)
  stage = "final stage (earlier stages mixed in w.p. 0.1)" if args.stage == "final" else "stage 0"
  print(
    f"method {args.method}, {stage}; batch {args.batch}; {len(new.data.train)} training problems; "
    f"{args.steps} steps of {args.batch} rows, {real:,} real tokens "
    f"({real / args.steps / args.batch:.1f} per row)"
  )
  print(
    f"old: padded to T={old.spec.T} (P={old.spec.P}, U={old.spec.U}), full KV-cached forward; "
    f"padding {pad['old']:.1%}"
  )
  print(
    f"new: bucketed (window {args.window} batches, widths {widths}), compact forward; padding "
    f"{pad['new']:.1%}"
  )
  print(
    f"summed cross-entropy of the {args.steps} steps: old {ce['old']:.4f}, new {ce['new']:.4f} "
    f"(|Δ| {abs(ce['old'] - ce['new']):.1e})"
  )
  print(
    f"{args.rounds} rounds x {args.steps} steps, ABBA; compile old {compile_s['old']:.1f}s "
    f"({len({b['tokens'].shape for b in batches['old']})} shape), new {compile_s['new']:.1f}s "
    f"({len(widths)} shapes) (excluded)"
  )
  for p in PATHS:
    print(
      f"  {p}: {statistics.median(rates[p]):9.0f} real tokens/s (median; min {min(rates[p]):.0f}, "
      f"max {max(rates[p]):.0f})"
    )
  print(
    f"ratio new / old real tokens/s: {statistics.median(ratios):.2f}x (median of per-round ratios; "
    f"min {min(ratios):.2f}, max {max(ratios):.2f})"
  )
  if args.profile:
    profile(fns["new"], state, device_batches["new"])


def profile(fn, state, batches, top: int = 12) -> None:
  """Trace the new path's steps and print the device time by kind of operation (XLA CPU thunk names:
  ``ynn``/``dot`` fusions are matmuls; ``while`` is the thought loop, whose body's ops also count in
  their own kinds; operations of one step may overlap on several cores, so shares are of the summed
  time)."""
  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder, create_perfetto_trace=True)
    for b in batches:
      jax.block_until_ready(fn(state, b))
    jax.profiler.stop_trace()
    trace = json.load(
      gzip.open(sorted(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True))[-1])
    )
  total, kinds, ops = 0.0, collections.Counter(), collections.Counter()
  for event in trace["traceEvents"]:
    name = event.get("name", "")
    if (
      event.get("ph") != "X"
      or "Thunk" in name
      or "$" in name
      or "Await" in name
      or name.startswith("Pjit")
    ):
      continue
    kind = (
      "thought loop (while)"
      if name.startswith("while")
      else "matmul"
      if name.startswith(("ynn", "dot", "cublas", "gemm")) or "dot" in name
      else "copy / transpose"
      if "copy" in name or "transpose" in name
      else "element-wise / reduce / other"
    )
    kinds[kind] += event["dur"]
    ops[name] += event["dur"]
    total += event["dur"] if kind != "thought loop (while)" else 0.0
  steps = len(batches)
  print(f"profile of the new step ({steps} steps traced; ms per step, summed over operations):")
  for kind, us in kinds.most_common():
    share = f"{us / total:.0%}" if kind != "thought loop (while)" else "contains ops counted above"
    print(f"  {kind:32s} {us / 1e3 / steps:8.1f} ms  ({share})")
  print(
    "  largest operations: "
    + ", ".join(f"{name} {us / 1e3 / steps:.1f} ms" for name, us in ops.most_common(top))
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="small", choices=list(th.SIZES))
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument(
    "--rounds", type=int, default=None, help="ABBA rounds (default 7 forward, 4 train)"
  )
  parser.add_argument(
    "--steps",
    type=int,
    default=None,
    help="calls per method per round (default 3 forward, 8 train steps)",
  )
  parser.add_argument(
    "--train", action="store_true", help="time train steps: old padded path vs new bucketed"
  )
  forward = parser.add_argument_group("forward")
  forward.add_argument("--thoughts", type=int, default=4)
  forward.add_argument(
    "--prompt", default="80:160", help="lo:hi prompt lengths (tokens before the first thought)"
  )
  forward.add_argument(
    "--rest", type=int, default=2, help="tokens after the thoughts ([A] and the target)"
  )
  train = parser.add_argument_group("train")
  train.add_argument("--method", default="coconut", choices=("coconut", "cot", "nocot"))
  train.add_argument("--stage", default="final", choices=("final", "0"))
  train.add_argument(
    "--problems", type=int, default=2000, help="generated training problems (without --data)"
  )
  train.add_argument("--data", default="", help="a generated data folder (its train.json) instead")
  train.add_argument(
    "--window", type=int, default=32, help="bucket window in batches (the config default: 32)"
  )
  train.add_argument(
    "--profile", action="store_true", help="also trace the new step and print where time goes"
  )
  args = parser.parse_args(argv)
  if args.train:
    args.rounds, args.steps = args.rounds or 4, args.steps or 8
    train_main(args)
  else:
    args.rounds, args.steps = args.rounds or 7, args.steps or 3
    forward_main(args)


if __name__ == "__main__":
  main()
