"""Compile time per library program: ours (superpose.rasp.compiler) beside tracr's, same run.

    python -m projects.compiled.bench [--repeats 5] [--no-tracr]

Ours: the median of ``--repeats`` compilations (RASP → numpy weights, no JAX compilation), and
the first forward pass after it (jit of that model's shapes). tracr: one ``compile_rasp_to_model``,
which includes Haiku's parameter initialisation under JAX (most of its time); a warm-up compile
runs first so imports are not counted. The speed-up is conservative: tracr's time over ours *plus*
our first forward (tracr's compile runs no forward). A row whose model shapes equal an earlier row's
reuses that jit (and tracr its Haiku init), so both times drop there (hist after length). Also
prints layers and residual width of both. Configurations are tracr's test cases'.
"""

from __future__ import annotations

import argparse
import statistics
import time

from projects.compiled import programs, tracr_bridge
from superpose.rasp.compiler import compile_rasp

ABCD = ["a", "b", "c", "d"]
CONFIGS = {  # program: (vocab, max_seq_len, build options)
  "length": (ABCD, 5, {}),
  "frac_prevs": (["a", "b", "c", "x"], 5, {"token": "x"}),
  "pair_balance": (["a", "b", "c", "(", ")"], 10, {"pairs": ["()"]}),
  "shuffle_dyck": (list("(){}[]"), 6, {"pairs": ["()", "{}", "[]"]}),
  "shuffle_dyck2": (list("(){}"), 5, {}),
  "hist": (ABCD, 5, {}),
  "sort_unique": ([1, 2, 3, 4], 5, {}),
  "sort": ([1, 2, 3, 4], 5, {}),
  "sort_freq": ([1, 2, 3, 4], 5, {}),
  "reverse": (ABCD, 5, {}),
  "shift_by": (ABCD, 5, {}),
  "detect_pattern": (["a", "b", "c"], 6, {"pattern": ["a", "b", "c"]}),
  "count_less_freq": (ABCD, 6, {}),
  "count": (["a", "b", "c"], 8, {"token": "a"}),
  "nary_sequencemap": ([1, 2, 3], 5, {}),
}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--no-tracr", action="store_true")
  args = p.parse_args(argv)
  with_tracr = tracr_bridge.available() and not args.no_tracr
  if with_tracr:  # imports and first-call overheads out of the first row
    tracr_bridge.compile_with_tracr(programs.build("hist", ABCD, 3), ABCD, 3)
  header = f"{'program':18s} {'vocab':>5s} {'len':>4s} | {'ours ms':>8s} {'+1st fwd':>9s} "
  header += f"{'L':>2s} {'D':>4s}"
  header += f" | {'tracr ms':>9s} {'L':>2s} {'D':>4s} | {'speed-up':>8s}" if with_tracr else ""
  print(header)
  print("-" * len(header))
  for name, (vocab, max_seq_len, opts) in CONFIGS.items():
    times = []
    for _ in range(args.repeats):
      program = programs.build(name, vocab, max_seq_len, **opts)
      start = time.perf_counter()
      compiled = compile_rasp(program, vocab, max_seq_len)
      times.append(time.perf_counter() - start)
    ours_ms = statistics.median(times) * 1e3
    start = time.perf_counter()
    compiled.apply([vocab[0]], check=False)  # first forward pass: jit of this config's shapes
    jit_ms = (time.perf_counter() - start) * 1e3
    row = (
      f"{name:18s} {len(vocab):5d} {max_seq_len:4d} | {ours_ms:8.1f} {jit_ms:9.0f} "
      f"{compiled.num_layers:2d} "
      f"{compiled.d_model:4d}"
    )
    if with_tracr:
      theirs = tracr_bridge.compile_with_tracr(
        programs.build(name, vocab, max_seq_len, **opts), vocab, max_seq_len
      )
      tracr_ms = theirs.compile_seconds * 1e3
      speedup = tracr_ms / (ours_ms + jit_ms)
      row += f" | {tracr_ms:9.1f} {theirs.num_layers:2d} {theirs.d_model:4d} | {speedup:7.1f}x"
    print(row, flush=True)


if __name__ == "__main__":
  main()
