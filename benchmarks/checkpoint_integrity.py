"""What content checksums cost a checkpoint: save and restore of the 125M train state with and
without them.

    python -m benchmarks.checkpoint_integrity [--size 125m] [--rounds 3] [--dir /tmp/ckpt_bench]

The state is the one ``launch.train`` saves for ``configs/lm/scale.py:<size>`` (the shapes
``launch.plan`` compiles): parameters, AdamW moments and the step, in the config's dtypes (bf16 for
the scale configs; ``--param-dtype float32`` for f32 master weights), on one device. Each round
saves and restores it with checksums on and off in ABBA order (synchronous saves, so that the time
is the whole save), into a fresh directory each time. Prints the time to compute the checksums
alone, the medians of save and restore times, and the ratios with/without (1.00 = free). The
checksums are computed where the arrays live, so on an accelerator they cost a pass over device
memory; on a CPU they share the cores with the writer threads.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import jax
from flax import nnx

from superpose import nn
from superpose.train import checkpoint, integrity, optim, state as state_lib
from superpose.train.mesh import make_mesh


def build_state(size: str, param_dtype: str | None):
  sys.path.insert(
    0, str(pathlib.Path(__file__).resolve().parents[1])
  )  # configs/ live in the checkout
  from configs.lm import scale

  cfg = scale.get_config(size).to_dict()
  if param_dtype:
    cfg["model"]["param_dtype"] = param_dtype
  model_cfg = nn.from_dict(cfg["model"])
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    make = lambda: nn.Transformer(model_cfg, rngs=nnx.Rngs(0))
    _, abs_params, _ = state_lib.split_model(make, mesh)
    tx, _ = optim.make_optimizer(cfg["optim"], abs_params, cfg["train"]["steps"])
    state, _ = state_lib.create(make, tx, abs_params, mesh)
    abstract = state_lib.abstract_state(tx, abs_params, mesh)
  jax.block_until_ready(state)
  return state, abstract, mesh


def timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", default="125m")
  ap.add_argument(
    "--param-dtype", default=None, help="e.g. float32 (the scale configs use bfloat16)"
  )
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
  args = ap.parse_args()

  state, abstract, mesh = build_state(args.size, args.param_dtype)
  leaves = jax.tree.leaves(state)
  nbytes = sum(x.nbytes for x in leaves)
  print(
    f"{args.size} train state: {sum(x.size for x in jax.tree.leaves(state['params'])) / 1e6:.1f} M "
    "parameters, "
    f"{len(leaves)} arrays, {nbytes / 2**20:.0f} MiB ({jax.devices()[0].device_kind}, "
    f"{jax.devices()[0].platform})"
  )

  integrity.checksums(state)  # compile
  sums = [timed(lambda: integrity.checksums(state)) for _ in range(5)]
  print(
    f"checksums alone: median {statistics.median(sums):.3f} s "
    f"({nbytes / statistics.median(sums) / 2**30:.2f} GiB/s)"
  )

  root = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="ckpt_bench_"))
  times = {(kind, on): [] for kind in ("save", "restore") for on in (True, False)}
  order = []
  for r in range(args.rounds):
    order += [True, False] if r % 2 == 0 else [False, True]
  # one unmeasured round of each first: orbax's and the checksum's compilations, first-touch
  # allocation
  for i, on in enumerate([True, False] + order):
    directory = root / f"r{i}_{'on' if on else 'off'}"
    with checkpoint.Checkpointer(directory, async_save=False, checksums=on) as ck:
      t_save = timed(lambda: (ck.save(1, state), ck.wait()))
    with checkpoint.Checkpointer(directory, checksums=on) as ck:
      result = {}
      t_restore = timed(lambda: result.update(out=ck.restore(abstract)))
      jax.block_until_ready(result["out"][1])
    if i >= 2:
      times["save", on].append(t_save)
      times["restore", on].append(t_restore)
    shutil.rmtree(directory)
  if not args.dir:
    shutil.rmtree(root)

  med = {k: statistics.median(v) for k, v in times.items()}
  for kind in ("save", "restore"):
    ratios = [a / b for a, b in zip(times[kind, True], times[kind, False])]
    print(
      f"{kind:7s} with checksums {med[kind, True]:.2f} s, without {med[kind, False]:.2f} s: "
      f"ratio {med[kind, True] / med[kind, False]:.3f} (per round "
      f"{', '.join(f'{x:.3f}' for x in ratios)})"
    )


if __name__ == "__main__":
  main()
