"""Compile a library RASP program into superpose.nn weights; save, explain, run.

    python -m projects.compiled.compile --program sort --max-seq-len 8 --vocab a,b,c --out DIR
    python -m projects.compiled.compile --program sort --max-seq-len 8 --vocab a,b,c --explain \\
        --input c,a,b

``--out DIR`` writes ``DIR/config.json`` (``{"model": TransformerConfig, "compiled": encoders,
output columns, layer allocation, residual labels}``), ``DIR/residual_basis.json`` and the weights
as a repo checkpoint (``DIR/checkpoints/0/params``; ``superpose.train.checkpoint.load_params(DIR,
target)`` reads them, ``superpose.rasp.compiler.CompiledModel.load(DIR)`` gives the whole compiled
model back). ``--explain`` prints the layer allocation and the residual layout; ``--input`` runs the
model on one comma-separated input (tokens parsed like the vocab) and prints its output beside
RASP's.
"""

from __future__ import annotations

import argparse
import sys

from projects.compiled import programs
from superpose import rasp
from superpose.rasp.compiler import compile_rasp


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog="python -m projects.compiled.compile", description=__doc__.split("\n")[0]
  )
  p.add_argument("--program", required=True, choices=programs.NAMES)
  p.add_argument("--vocab", required=True, help="comma-separated tokens (all ints → int tokens)")
  p.add_argument("--max-seq-len", type=int, required=True)
  p.add_argument(
    "--causal", action="store_true", help="causal attention mask (agrees with causal RASP)"
  )
  p.add_argument(
    "--token", help="the token of frac_prevs / count (default: the first of the vocab)"
  )
  p.add_argument("--pattern", help="detect_pattern's pattern, comma-separated")
  p.add_argument(
    "--pairs", default="(),{}", help="shuffle_dyck / pair_balance bracket pairs, comma-separated"
  )
  p.add_argument("--offset", type=int, default=1, help="shift_by offset")
  p.add_argument("--n", type=int, default=2, help="count_less_freq threshold")
  p.add_argument("--out", help="directory for config.json, residual_basis.json and the checkpoint")
  p.add_argument(
    "--explain", action="store_true", help="print the layer allocation and residual layout"
  )
  p.add_argument("--input", help="comma-separated input to run (without BOS)")
  args = p.parse_args(argv)
  if not (args.out or args.explain or args.input is not None):
    p.error("nothing to do: give --out, --explain and/or --input")
  if args.max_seq_len < 1:
    p.error(f"--max-seq-len must be positive, got {args.max_seq_len}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  vocab = programs.parse_vocab(args.vocab)
  token = None
  if args.token is not None:
    token = programs.parse_vocab(args.token)[0] if isinstance(vocab[0], int) else args.token
  pattern = programs.parse_vocab(args.pattern) if args.pattern else None
  program = programs.build(
    args.program,
    vocab,
    args.max_seq_len,
    token=token,
    pattern=pattern,
    pairs=args.pairs.split(","),
    offset=args.offset,
    n=args.n,
  )
  try:
    compiled = compile_rasp(program, vocab, args.max_seq_len, causal=args.causal)
  except (NotImplementedError, ValueError, TypeError) as e:
    print(f"error: {args.program} does not compile for vocab {vocab}: {e}", file=sys.stderr)
    return 2
  print(
    f"compiled {args.program}: {compiled.num_layers} layers, d_model {compiled.d_model}, "
    f"{compiled.compile_seconds * 1e3:.1f} ms"
  )
  if args.explain:
    print(compiled.explain())
  if args.input is not None:
    xs = programs.parse_vocab(args.input) if args.input else []
    if not isinstance(vocab[0], int):
      xs = [str(x) for x in xs]
    evaluate = rasp.causal_evaluate if args.causal else rasp.evaluate
    print("input: ", xs)
    print("model: ", compiled.apply(xs))
    print("RASP:  ", evaluate(program, xs))
  if args.out:
    try:
      print(f"saved to {compiled.save(args.out)}")
    except FileExistsError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
