"""Residual compression of a compiled RASP model (tracr paper §5; spec p2_tracr.md §4.2/§4.4).

    python -m projects.compiled.compress --config configs/compiled/compress.py --workdir \\
        workdirs/compress

The compiled weights are frozen; only ``W`` (D × d) is learned. The compressed model computes in d
dimensions and reads / writes the frozen D-dimensional sublayers through W (tracr's
``CompressedTransformer`` with ``unembed_at_every_layer=True``, ``w_emb = Wᵀ``):

    h = embed(x) @ W                                  embeddings written into d dims
    for every sublayer f (attention, then MLP, of each block):
        out = f(h @ Wᵀ);  h = h + out @ W             read D dims, run the frozen layer, write back
    y = unembed(h @ Wᵀ)                               the output columns of the compiled model

    loss = L_out + λ Σ_sublayers mean((out_i − out_i_orig)²)

``L_out`` is the mean square error against the uncompressed model's output columns (the numerical
output, or the categorical one-hot read-outs: the decoder thresholds their absolute value at 0.5, so
matching values, not only the argmax, is what keeps decoding right). Means run over real positions
(pads excluded; BOS excluded from ``L_out``) and over D for the layer term. Optimiser: Adam on W
(step size × a cosine decay to 0).

Two choices beyond the spec, both config knobs, both measured on frac_prevs d = 6 before the sweep
(3,000–10,000 steps, 5 seeds): W starts with orthonormal columns (a random projection, so W Wᵀ = I
at d = D), and the attention logits are annealed — multiplied by ``anneal_start`` at step 0, rising
geometrically to 1 at ``anneal_fraction`` of the steps (the compiled softmax is very cold, logits
≈ 100, and without annealing every seed stalled at ≈ 55% accuracy and loss ≈ 0.01; with it 5/5 seeds
reached 98–100%). Evaluation always runs the compiled temperature.

A sweep trains, for each d, every (learning rate, seed) pair of a fixed grid at once: W of shape
(lrs·seeds, D, d) under ``jax.vmap``, steps inside ``lax.scan``, so each d compiles once. Each seed
draws its own W and minibatches (with replacement from the training split). The lr of a seed is the
one with the best validation accuracy (then loss); accuracy is reported on the test split: the
fraction of inputs whose decoded output equals the RASP evaluator's at every position (numerical:
within ``tolerance``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from projects.compiled import programs
from superpose import rasp
from superpose.nn import cache as cache_lib
from superpose.rasp import evaluator, lib, validate
from superpose.rasp.compiler import CompiledModel, compile_rasp
from superpose.rasp.compiler.model import NONE_THRESHOLD, graphdef_for


# Programs and data --------------------------------------------------------------------------------
def make_program(name: str, vocab, max_seq_len: int, token=None) -> rasp.SOp:
  """The study's programs as the spec states them; other library programs through
  ``programs.build``."""
  if name == "frac_prevs":
    return lib.make_frac_prevs(rasp.tokens == (token if token is not None else sorted(vocab)[-1]))
  if name == "sort_unique":
    return lib.make_sort_unique(rasp.tokens, rasp.tokens)
  return programs.build(name, vocab, max_seq_len, token=token)


def input_space(name: str, program, vocab, max_seq_len: int) -> list[tuple]:
  """Every input of length 1..max_seq_len on which the program is defined (sort_unique: distinct
  keys) and the compiled model is exact (no Aggregate the compiler refuses on that input)."""
  inputs = []
  for n in range(1, max_seq_len + 1):
    for xs in itertools.product(sorted(vocab), repeat=n):
      if name == "sort_unique" and len(set(xs)) < n:
        continue
      if not validate.dynamic_issues(program, list(xs)):
        inputs.append(xs)
  return inputs


@dataclasses.dataclass
class Split:
  inputs: list
  ids: np.ndarray  # (N, T) with BOS, right-padded
  segments: np.ndarray  # (N, T) 1 on BOS and tokens
  expected: list  # the evaluator's output per input


@dataclasses.dataclass
class Study:
  name: str
  compiled: CompiledModel
  splits: dict  # "train" / "val" / "test" → Split
  tolerance: float

  @property
  def D(self) -> int:
    return self.compiled.d_model

  @property
  def num_columns(self) -> int:
    c = self.compiled
    return 1 if c.output_encoding == "numerical" else len(c.output_values)


def build_study(
  name: str,
  vocab,
  max_seq_len: int,
  *,
  token=None,
  fractions=(0.6, 0.2, 0.2),
  split_seed: int = 0,
  tolerance: float = 0.05,
  max_inputs: int | None = None,
) -> Study:
  program = make_program(name, vocab, max_seq_len, token)
  compiled = compile_rasp(program, set(vocab), max_seq_len)
  cfg = compiled.config
  if cfg.norm != "none" or not cfg.mlp_residual or cfg.scan_layers or cfg.activation == "step":
    raise ValueError(
      f"compress: {name} compiled to an architecture this study does not handle "
      f"(norm={cfg.norm}, mlp_residual={cfg.mlp_residual}, activation={cfg.activation})"
    )
  inputs = input_space(name, program, vocab, max_seq_len)
  order = np.random.default_rng(split_seed).permutation(len(inputs))
  if max_inputs is not None:
    order = order[:max_inputs]
  n_train = int(round(fractions[0] * len(order)))
  n_val = int(round(fractions[1] * len(order)))
  parts = {
    "train": order[:n_train],
    "val": order[n_train : n_train + n_val],
    "test": order[n_train + n_val :],
  }
  splits = {}
  for key, idx in parts.items():
    xs = [list(inputs[i]) for i in idx]
    ids, segments = compiled.encode(xs, length=max_seq_len + 1)
    splits[key] = Split(xs, ids, segments, [evaluator.evaluate(program, x) for x in xs])
  return Study(name, compiled, splits, tolerance)


# The compressed forward pass ----------------------------------------------------------------------
def compressed_forward(cfg, params, W_Dd, ids_BT, segments_BT, q_scale=1.0):
  """(output columns (B, T, C) — all padded-vocab columns, slice with ``num_columns`` —, sublayer
  outputs (2L, B, T, D) in D dims before the write). ``W = I`` is the compiled model itself.
  ``q_scale`` multiplies every attention logit (< 1: a warmer softmax, for annealing in
  training)."""
  if not (isinstance(q_scale, float) and q_scale == 1.0):
    params = {
      **params,
      "blocks": {
        i: {**b, "attn": {**b["attn"], "q": b["attn"]["q"] * q_scale}}
        for i, b in params["blocks"].items()
      },
    }
  model = nnx.merge(graphdef_for(cfg), params)
  positions_BT = jnp.broadcast_to(jnp.arange(ids_BT.shape[1]), ids_BT.shape)
  mask_BTS = cache_lib.self_mask(segments_BT, ids_BT.shape[1], cfg.causal)
  read = lambda h: h @ W_Dd.T  # d → D
  write = lambda x: x @ W_Dd  # D → d
  h = write(model.embed(ids_BT, positions_BT))
  outs = []
  for block in model.blocks:
    out, _, _ = block.attn(
      read(h), positions_BT=positions_BT, mask_BTS=mask_BTS, segment_ids_BT=segments_BT
    )
    outs.append(out)
    h = h + write(out)
    out = block.mlp(read(h))
    outs.append(out)
    h = h + write(out)
  return model.logits(read(h)), jnp.stack(outs)


def make_functions(
  study: Study,
  *,
  layer_weight: float,
  batch_size: int,
  steps: int = 1,
  schedule: str = "constant",
  anneal_start: float = 1.0,
  anneal_fraction: float = 0.0,
  adam_eps: float = 1e-8,
):
  """Jitted (init, train chunk, evaluate) over a leading model axis M = lrs × seeds."""
  cfg, C = study.compiled.config, study.num_columns
  params = jax.tree.map(jnp.asarray, study.compiled.params)
  with jax.default_matmul_precision("float32"):
    targets = {k: _targets(cfg, params, s, C) for k, s in study.splits.items()}
  # Adam; the step size is applied per model below. ``adam_eps`` is the gradient scale under which
  # steps shrink: with 1e-8, f32 round-off gradients (~1e-7) near an exact solution get lr-sized
  # steps.
  tx = optax.scale_by_adam(eps=adam_eps)

  def loss(W, ids, segments, y_tgt, outs_tgt, q_scale=1.0):
    y, outs = compressed_forward(cfg, params, W, ids, segments, q_scale)
    outs_tgt = jnp.swapaxes(outs_tgt, 0, 1)
    seg = segments.astype(jnp.float32)
    out_mask = seg.at[:, 0].set(0.0)  # BOS carries no output
    l_out = jnp.sum(out_mask[..., None] * (y[..., :C] - y_tgt) ** 2) / (jnp.sum(out_mask) * C)
    l_layer = jnp.sum(seg[None, ..., None] * (outs - outs_tgt) ** 2, axis=(1, 2, 3)) / (
      jnp.sum(seg) * study.D
    )
    return l_out + layer_weight * jnp.sum(l_layer)

  train = study.splits["train"]
  train_data = (jnp.asarray(train.ids), jnp.asarray(train.segments), *targets["train"])
  n_train = train.ids.shape[0]

  def one_step(W, opt_state, key, lr, step):
    if (
      schedule == "cosine"
    ):  # to 0 at ``steps``: Adam's unit-size steps otherwise jitter around the optimum
      lr = lr * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(step, steps) / steps))
    elif schedule != "constant":
      raise ValueError(f"compress: unknown schedule {schedule!r} (constant | cosine)")
    # Attention temperature: logits × anneal_start^(1 − t) with t = step / (anneal_fraction · steps)
    # clipped to 1, so the softmax starts warm and is the compiled one from then on.
    q_scale = 1.0
    if anneal_start != 1.0:
      t = jnp.minimum(step / max(anneal_fraction * steps, 1.0), 1.0)
      q_scale = anneal_start ** (1.0 - t)
    idx = jax.random.randint(key, (batch_size,), 0, n_train)
    value, grad = jax.value_and_grad(loss)(W, *(a[idx] for a in train_data), q_scale)
    updates, opt_state = tx.update(grad, opt_state)
    return W - lr * updates, opt_state, value

  @jax.jit
  def init(W0_MDd):
    return jax.vmap(tx.init)(W0_MDd)

  @functools.partial(jax.jit, static_argnames="n")
  def train_chunk(W, opt_state, keys_M, lrs_M, start, n: int):
    """Steps start..start+n-1 for every model (step keys = fold_in(model key, step)); returns W,
    opt_state and the mean loss per model over the chunk."""

    def body(carry, step):
      W, opt_state = carry
      step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys_M)
      W, opt_state, value = jax.vmap(one_step, in_axes=(0, 0, 0, 0, None))(
        W, opt_state, step_keys, lrs_M, step
      )
      return (W, opt_state), value

    (W, opt_state), values = jax.lax.scan(body, (W, opt_state), start + jnp.arange(n))
    return W, opt_state, values.mean(0)

  @jax.jit
  def evaluate(W_MDd, ids, segments, y_tgt, outs_tgt):
    """Per model: output columns (M, N, T, C), loss (M,), per-sublayer cosine to the original (M,
    2L)."""

    def one(W):
      y, outs = compressed_forward(cfg, params, W, ids, segments)
      outs_tgt_ = jnp.swapaxes(outs_tgt, 0, 1)
      num = jnp.sum(outs * outs_tgt_, -1)
      den = jnp.linalg.norm(outs, axis=-1) * jnp.linalg.norm(outs_tgt_, axis=-1)
      live = (segments[None] > 0) & (jnp.linalg.norm(outs_tgt_, axis=-1) > 1e-6)
      cos = jnp.sum(jnp.where(live, num / jnp.maximum(den, 1e-12), 0.0), (1, 2)) / jnp.maximum(
        live.sum((1, 2)), 1
      )
      return y[..., :C], loss(W, ids, segments, y_tgt, outs_tgt), cos

    return jax.vmap(one)(W_MDd)

  def evaluate_split(W_MDd, key: str):
    s = study.splits[key]
    with jax.default_matmul_precision("float32"):
      return evaluate(W_MDd, jnp.asarray(s.ids), jnp.asarray(s.segments), *targets[key])

  return init, train_chunk, evaluate_split


def _targets(cfg, params, split: Split, C: int):
  y, outs = jax.jit(compressed_forward, static_argnums=0)(
    cfg, params, jnp.eye(cfg.d_model), jnp.asarray(split.ids), jnp.asarray(split.segments)
  )
  return y[..., :C], jnp.swapaxes(outs, 0, 1)  # (N, 2L, T, D): rows index inputs


def accuracy(study: Study, y_BTX: np.ndarray, split: str) -> np.ndarray:
  """Per input: 1.0 if the decoded output equals the evaluator's at every position."""
  s, c = study.splits[split], study.compiled
  y = np.asarray(y_BTX, np.float64)
  correct = np.zeros(len(s.inputs))
  for b, (xs, want) in enumerate(zip(s.inputs, s.expected)):
    row = y[b, 1 : len(xs) + 1]
    if c.output_encoding == "numerical":
      ok = all(w is not None and abs(v - w) <= study.tolerance for v, w in zip(row[:, 0], want))
    else:
      best = row.argmax(-1)
      got = [c.output_values[j] if row[t, j] > NONE_THRESHOLD else None for t, j in enumerate(best)]
      ok = got == list(want)
    correct[b] = ok
  return correct


def initial_W(key, D: int, d: int, init: str) -> jax.Array:
  """'orthogonal': orthonormal columns (a random projection; W Wᵀ = I at d = D), 'normal': N(0,
  1/d)."""
  if init == "orthogonal":
    return jax.nn.initializers.orthogonal()(key, (D, d))
  if init == "normal":
    return jax.random.normal(key, (D, d)) / math.sqrt(d)
  raise ValueError(f"compress: unknown init {init!r} (orthogonal | normal)")


# One d: every (lr, seed) together -----------------------------------------------------------------
def train_point(
  study: Study,
  d: int,
  *,
  lrs,
  seeds,
  steps: int,
  chunk: int,
  batch_size: int,
  layer_weight: float,
  init: str,
  schedule: str = "cosine",
  anneal_start: float = 1.0,
  anneal_fraction: float = 0.0,
  adam_eps: float = 1e-8,
  log=print,
) -> dict:
  L, S, D = len(lrs), len(seeds), study.D
  init_fn, train_chunk, evaluate_split = make_functions(
    study,
    layer_weight=layer_weight,
    batch_size=batch_size,
    steps=steps,
    schedule=schedule,
    anneal_start=anneal_start,
    anneal_fraction=anneal_fraction,
    adam_eps=adam_eps,
  )
  # Seed s draws the same W0 and minibatches under every lr: lrs differ only in their step size.
  seed_keys = [jax.random.key(1000 * s + d) for s in seeds]
  W0 = jnp.stack([initial_W(jax.random.fold_in(k, 0), D, d, init) for k in seed_keys])
  W = jnp.tile(W0, (L, 1, 1))
  data_keys = jnp.concatenate([jnp.stack([jax.random.fold_in(k, 1) for k in seed_keys])] * L)
  lrs_M = jnp.repeat(jnp.asarray(lrs, jnp.float32), S)
  opt_state = init_fn(W)
  start, done, curve = time.perf_counter(), 0, []
  while done < steps:
    n = min(chunk, steps - done)
    with jax.default_matmul_precision("float32"):
      W, opt_state, loss_M = train_chunk(W, opt_state, data_keys, lrs_M, done, n=n)
    done += n
    curve.append([done, np.asarray(loss_M).tolist()])
    log(
      f"  d={d:3d} step {done:6d}/{steps}  loss median {np.median(loss_M):.3g} "
      f"min {np.min(loss_M):.3g}  {time.perf_counter() - start:5.1f}s"
    )
  val_y, val_loss, _ = evaluate_split(W, "val")
  test_y, test_loss, test_cos = evaluate_split(W, "test")
  val_acc = np.array([accuracy(study, y, "val").mean() for y in np.asarray(val_y)]).reshape(L, S)
  test_acc = np.array([accuracy(study, y, "test").mean() for y in np.asarray(test_y)]).reshape(L, S)
  val_loss = np.asarray(val_loss).reshape(L, S)
  # Best lr per seed on validation: highest accuracy, then lowest loss.
  choice = np.array(
    [min(range(L), key=lambda i: (-val_acc[i, s], val_loss[i, s])) for s in range(S)]
  )
  pick = lambda a: np.asarray(a)[choice, np.arange(S)]
  chosen_test = pick(test_acc)
  W_LSDd = np.asarray(W).reshape(L, S, D, d)
  return {
    "d": d,
    "test_acc": chosen_test.tolist(),
    "median": float(np.median(chosen_test)),
    "min": float(chosen_test.min()),
    "max": float(chosen_test.max()),
    "lr": [float(lrs[i]) for i in choice],
    "val_acc": pick(val_acc).tolist(),
    "val_loss": pick(val_loss).tolist(),
    "test_loss": pick(np.asarray(test_loss).reshape(L, S)).tolist(),
    "layer_cos": pick(np.asarray(test_cos).reshape(L, S, -1)).tolist(),
    "test_acc_all": test_acc.tolist(),
    "val_acc_all": val_acc.tolist(),
    "final_train_loss": np.asarray(curve[-1][1]).reshape(L, S).tolist() if curve else None,
    "seconds": time.perf_counter() - start,
    "W": W_LSDd[choice, np.arange(S)],
  }


# Which features share directions ------------------------------------------------------------------
def shared_directions(
  W_Dd: np.ndarray, labels, *, cos_threshold: float, drop_fraction: float
) -> dict:
  """Rows of W are the features' directions in the d-space. A feature is dropped when its norm is
  below ``drop_fraction`` × the largest; two kept features share a direction when |cos| ≥
  threshold."""
  norms = np.linalg.norm(W_Dd, axis=1)
  kept = norms >= drop_fraction * norms.max()
  unit = W_Dd / np.maximum(norms[:, None], 1e-12)
  cos = unit @ unit.T
  pairs = [
    (labels[i], labels[j], float(cos[i, j]))
    for i in range(len(labels))
    for j in range(i + 1, len(labels))
    if kept[i] and kept[j] and abs(cos[i, j]) >= cos_threshold
  ]
  pairs.sort(key=lambda p: -abs(p[2]))
  return {
    "norms": {l: float(n) for l, n in zip(labels, norms)},
    "dropped": [l for l, k in zip(labels, kept) if not k],
    "shared": pairs,
  }


# The sweep ----------------------------------------------------------------------------------------
def run(config, workdir) -> dict:
  from projects.compiled import compress_report  # matplotlib only where results are written

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  log_file = open(workdir / "log.txt", "a")

  def log(msg):
    print(msg, flush=True)
    log_file.write(msg + "\n")
    log_file.flush()

  t = config.train
  lrs, seeds = list(t.lrs), list(range(t.num_seeds))
  log(
    f"compress: lrs {lrs}  seeds {len(seeds)}  steps {t.steps}  batch {t.batch_size}  "
    f"λ {t.layer_weight}  init {t.init}  schedule {t.schedule}  Adam eps {t.adam_eps}  "
    f"attention temperature {t.anneal_start} → 1 over {t.anneal_fraction:.0%} of the steps"
  )
  results, start = {"config": config.to_dict(), "programs": {}}, time.perf_counter()
  for name in config.programs:
    p = config.program_settings[name]
    vocab = list(p.vocab)
    study = build_study(
      name,
      vocab,
      p.max_seq_len,
      token=p.get("token"),
      fractions=tuple(config.data.fractions),
      split_seed=config.data.split_seed,
      tolerance=config.eval.tolerance,
      max_inputs=config.data.get("max_inputs"),
    )
    D = study.D
    dims = [d for d in (p.dims if p.get("dims") else range(1, D + 1)) if 1 <= d <= D]
    sizes = {k: len(s.inputs) for k, s in study.splits.items()}
    log(f"{name}: vocab {vocab}  max_seq_len {p.max_seq_len}  D {D}  inputs {sizes}  d {dims}")
    entry = {
      "vocab": vocab,
      "max_seq_len": p.max_seq_len,
      "D": D,
      "labels": study.compiled.residual_labels,
      "output_encoding": study.compiled.output_encoding,
      "splits": sizes,
      "points": [],
    }
    Ws = {}
    for d in dims:
      point = train_point(
        study,
        d,
        lrs=lrs,
        seeds=seeds,
        steps=t.steps,
        chunk=t.chunk,
        batch_size=t.batch_size,
        layer_weight=t.layer_weight,
        init=t.init,
        schedule=t.schedule,
        anneal_start=t.anneal_start,
        anneal_fraction=t.anneal_fraction,
        adam_eps=t.adam_eps,
        log=log,
      )
      W = point.pop("W")
      Ws[f"d{d}"] = W
      rep = int(max(range(len(seeds)), key=lambda s: (point["val_acc"][s], -point["val_loss"][s])))
      point["shown_seed"] = rep
      point["directions"] = shared_directions(
        W[rep],
        entry["labels"],
        cos_threshold=config.eval.cos_threshold,
        drop_fraction=config.eval.drop_fraction,
      )
      entry["points"].append(point)
      log(
        f"{name} d={d:3d}: test acc median {point['median']:.4f}  min {point['min']:.4f}  max "
        f"{point['max']:.4f}"
        f"  lr {point['lr']}  {point['seconds']:.1f}s  (elapsed {time.perf_counter() - start:.0f}s)"
      )
    np.savez(workdir / f"W_{name}.npz", **Ws)
    results["programs"][name] = entry
  results["seconds"] = time.perf_counter() - start
  (workdir / "results.json").write_text(json.dumps(results, indent=1))
  written = compress_report.write(
    results,
    workdir,
    Ws_dir=workdir,
    requested_dims=config.eval.get("heatmap_dims"),
    threshold=config.eval.target,
  )
  log(f"wrote {', '.join(str(p.name) for p in written)} in {workdir}  ({results['seconds']:.0f}s)")
  log_file.close()
  return results


def main(argv=None) -> int:
  from absl import app, flags
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file(
    "config", "configs/compiled/compress.py", "Config `path.py[:variant]`."
  )
  workdir_flag = flags.DEFINE_string("workdir", "workdirs/compress", "Output directory.")

  def _main(args):
    if len(args) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(args[1:])}")
    run(config_flag.value, workdir_flag.value)

  app.run(_main, argv=argv or sys.argv)
  return 0


if __name__ == "__main__":
  main()
