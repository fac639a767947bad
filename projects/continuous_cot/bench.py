"""Questions/s with KV-cached continuous thoughts vs a full re-forward per thought, in one run.

    python -m projects.continuous_cot.bench [--size small|tiny|medium|paper] [--batch 32] [--thoughts 4]
                                            [--prompt 80:160] [--rest 2] [--rounds 7] [--steps 3] [--train]

ProsQA-shaped batches: each row is a prompt of random length in ``--prompt lo:hi`` tokens (the
released graph_4 test prompts average 113 tokens, max 167), ``--thoughts`` latent slots, and
``--rest`` tokens after them (``[A]`` and the target), right-padded to one fixed width
T = hi + thoughts + rest. Both methods run jitted at these padded fixed shapes: the cached one with
the static bounds ``prefix_len = hi``, ``rest_len = rest``; the reference re-reads all T columns
``thoughts + 1`` times. Both are compiled and checked against each other before timing; rounds
alternate the order (ABBA) and the report gives medians of per-round questions/s and of the
per-round ratio. ``--train`` times a value-and-grad step of the teacher-forced loss instead of the
forward. ``--size paper`` is the paper's 2-layer, 8-head, d 768 model (meant for an accelerator;
it runs on CPU in a few minutes).
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

from projects.continuous_cot import thoughts as th
from superpose.nn.testing import random_model

VOCAB = 40
METHODS = ("cached", "reforward")


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


@functools.partial(jax.jit, static_argnums=0, static_argnames=("method", "num_thoughts", "prefix_len", "rest_len"))
def train_step(graphdef, state, tokens_BT, latent_start_B, weights_BT, *, method, num_thoughts, prefix_len, rest_len):
  """Value and gradient of the cross-entropy after the thoughts (the Coconut loss), through the thoughts."""
  def loss(state):
    out = th.METHODS[method](nnx.merge(graphdef, state), tokens_BT, latent_start_B, num_thoughts=num_thoughts,
                             prefix_len=prefix_len, rest_len=rest_len)
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits_BTV[:, :-1], tokens_BT[:, 1:])
    return (ce * weights_BT[:, 1:]).sum() / weights_BT[:, 1:].sum()
  return jax.value_and_grad(loss)(state)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="small", choices=list(th.SIZES))
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--thoughts", type=int, default=4)
  parser.add_argument("--prompt", default="80:160", help="lo:hi prompt lengths (tokens before the first thought)")
  parser.add_argument("--rest", type=int, default=2, help="tokens after the thoughts ([A] and the target)")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=3, help="calls per method per round")
  parser.add_argument("--train", action="store_true", help="time value-and-grad steps instead of forwards")
  args = parser.parse_args(argv)
  lo, hi = (int(x) for x in args.prompt.split(":"))
  num_thoughts, rest = args.thoughts, args.rest

  tokens, starts, lengths = make_batch(args.batch, (lo, hi), num_thoughts, rest)
  width = tokens.shape[1]
  cfg = th.model_config(args.size, vocab_size=VOCAB, max_seq_len=max(256, width))
  graphdef, state = nnx.split(random_model(cfg, seed=0, scale=0.02))
  prefix_len, rest_len = th.layout_bounds(starts, lengths, num_thoughts)
  th.check_layout(tokens.shape, starts, num_thoughts, prefix_len, rest_len, lengths)
  tokens_d, starts_d = jnp.asarray(tokens), jnp.asarray(starts)
  weights = (np.arange(width)[None] >= (starts + num_thoughts)[:, None]) & (np.arange(width)[None] < lengths[:, None])
  weights_d = jnp.asarray(weights, jnp.float32)
  bounds = dict(num_thoughts=num_thoughts, prefix_len=prefix_len, rest_len=rest_len)

  def call(method):
    if args.train:
      return train_step(graphdef, state, tokens_d, starts_d, weights_d, method=method, **bounds)
    return th.thought_forward(graphdef, state, tokens_d, starts_d, method=method, **bounds)

  compile_s, outs = {}, {}
  for method in METHODS:
    start = time.perf_counter()
    outs[method] = jax.block_until_ready(call(method))
    compile_s[method] = time.perf_counter() - start
  if args.train:
    check = f"|Δloss| {abs(float(outs['cached'][0]) - float(outs['reforward'][0])):.1e}"
  else:
    valid = np.arange(width)[None] < lengths[:, None]
    delta = np.abs(np.asarray(outs["cached"].logits_BTV) - np.asarray(outs["reforward"].logits_BTV))[valid].max()
    check = f"max |Δlogit| {delta:.1e}"

  rates = {m: [] for m in METHODS}
  for round_index in range(args.rounds):
    for method in (METHODS if round_index % 2 == 0 else METHODS[::-1]):
      start = time.perf_counter()
      for _ in range(args.steps):
        out = call(method)
      jax.block_until_ready(out)
      rates[method].append(args.batch * args.steps / (time.perf_counter() - start))
  ratios = [c / r for c, r in zip(rates["cached"], rates["reforward"])]

  device = jax.devices()[0]
  params = sum(x.size for x in jax.tree.leaves(state))
  print(f"device: {device.platform} {device.device_kind} (jax {jax.__version__}, {jax.device_count()} device(s))")
  print(f"model: {args.size} = gpt2 L{cfg.num_layers} H{cfg.num_heads} d{cfg.d_model} d_ff {cfg.d_ff} "
        f"V{cfg.vocab_size}, {params / 1e6:.2f}M params, f32")
  print(f"batch {args.batch}, prompt {lo}..{hi} tokens (mean {starts.mean():.1f}), {num_thoughts} thoughts, "
        f"{rest} after, padded width T={width}; cached bounds prefix_len={prefix_len} rest_len={rest_len}")
  print(f"mode: {'train (value_and_grad)' if args.train else 'forward'}; {args.rounds} rounds x {args.steps} calls, "
        f"ABBA; compile cached {compile_s['cached']:.1f}s, reforward {compile_s['reforward']:.1f}s (excluded); "
        f"{check}")
  for method in METHODS:
    print(f"  {method:9s} {statistics.median(rates[method]):9.1f} questions/s (median; "
          f"min {min(rates[method]):.1f}, max {max(rates[method]):.1f})")
  print(f"ratio cached / reforward: {statistics.median(ratios):.2f}x (median of per-round ratios; "
        f"min {min(ratios):.2f}, max {max(ratios):.2f}; target >= 3x)")


if __name__ == "__main__":
  main()
