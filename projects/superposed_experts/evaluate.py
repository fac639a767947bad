"""Every method on the same held-out target tokens: NLL per domain and on the switch set, gap
closed, forgetting, and what each method costs at inference.

    python -m projects.superposed_experts.evaluate --workdir DIR      # DIR laid out by pipeline.py

``DIR/pipeline.json`` names the domains, their data files and, per seed, the runs: ``experts`` (one
workdir per domain, expert 0 = the base) and ``learned`` ({method name: workdir} of superpose.train
runs: the paper's model, the learned merge, the one-trunk models …). Test sequences are selected
once into ``DIR/eval_sequences``; the switch set (sequences whose domain changes half-way) is built
from them. Each seed's per-sequence NLLs are cached in ``DIR/eval/seed_<s>.npz`` under a key of its
runs' checkpoints and the sequences' hashes. Writes ``DIR/results.{json,md}`` and the plots.

Scoring rules (issue §2): every method scores exactly the same targets; NLL is token-weighted within
a domain, in nats per token (bytes for the byte tokenizer); a method that decides from the input
never scores a token it has read — the sequence router reads the first ROUTER_PREFIX tokens and its
choice scores only what follows (before that its default expert, the best single one on validation),
the posterior and fixed-share mixtures weigh experts by the targets already seen. Everything chosen
(the interpolation weights, task-arithmetic / TIES λ, fixed mixture weights, the fixed-share rate,
the router's default) is chosen on the validation sequences, never on test, by the lowest mean NLL
over domains. Intervals: stats.summarise (paired bootstrap over seeds and sequences).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from projects.superposed_experts import baselines as bl
from projects.superposed_experts import cost as cost_lib
from projects.superposed_experts import data as data_lib
from projects.superposed_experts import stats
from superpose.train import checkpoint as ckpt_lib
from superpose.train.loader import load_model

EVAL_VERSION = 2  # bump when scoring changes: invalidates the per-seed caches
EVAL_BATCH = 64
ROUTER_PREFIX = 32  # tokens the sequence router reads
ROUTER_TRAIN = 256  # training sequences per domain that fit the router
SWITCH_SEQUENCES = 200  # per switch pair
TA_LAMBDAS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # λ = 0 is the base, a row of its own
TIES_LAMBDAS = (0.5, 0.75, 1.0, 1.25, 1.5)
TIES_DENSITY = 0.2


def switch_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
  """en→fr and fr→en; with a third domain also en→(third)."""
  pairs = [(names[0], names[1]), (names[1], names[0])]
  return pairs + [(names[0], n) for n in names[2:]]


# --- loading and scoring --------------------------------------------------------------------------


def method_of(cfg: Mapping) -> str:
  """'lm' for a plain LM or HF directory, else the superposed run's method."""
  return cfg.get("superposed", {}).get("method", "superpose") if "superposed" in cfg else "lm"


def target_logp(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]


def lm_scorer(graphdef) -> Callable:
  """jit(params, inputs, targets, real) -> (target log-probs, mean final state over the first
  ROUTER_PREFIX real inputs: the sequence router's features)."""

  def fn(params, inputs, targets, real):
    out = nnx.merge(graphdef, params)(inputs)
    prefix = (real & (jnp.arange(inputs.shape[1]) < ROUTER_PREFIX))[..., None].astype(jnp.float32)
    feats = (out.final_hidden_BTD.astype(jnp.float32) * prefix).sum(1) / jnp.maximum(
      prefix.sum(1), 1.0
    )
    return target_logp(out.logits_BTV, targets), feats

  return jax.jit(fn)


def model_scorer(graphdef, **call) -> Callable:
  """jit(params, inputs, targets, real, **kwargs) for a model whose call returns logits."""

  def fn(params, inputs, targets, real, **kwargs):
    logits = nnx.merge(graphdef, params)(inputs, **call, **kwargs)
    return target_logp(logits, targets), jnp.zeros((inputs.shape[0], 1))

  return jax.jit(fn, static_argnames=("use_autoencoders",))


def score(fn: Callable, params, rows: np.ndarray, per_row: Callable | None = None, **kwargs):
  """(target log-probs [N, T], features [N, D]) in fixed-size batches (one compilation).
  ``per_row(chunk) -> dict`` adds row-dependent keyword arrays (an oracle gate)."""
  logps, feats = [], []
  for i in range(0, len(rows), EVAL_BATCH):
    chunk = rows[i : i + EVAL_BATCH]
    n = len(chunk)
    if n < EVAL_BATCH:
      chunk = np.concatenate(
        [chunk, np.full((EVAL_BATCH - n,) + chunk.shape[1:], data_lib.PAD, chunk.dtype)]
      )
    b = data_lib.to_batch(chunk, np.zeros(len(chunk)))
    extra = per_row(i, EVAL_BATCH) if per_row else {}
    lp, f = fn(params, b["inputs"], b["targets"], chunk[:, :-1] != data_lib.PAD, **kwargs, **extra)
    logps.append(np.asarray(lp)[:n])
    feats.append(np.asarray(f)[:n])
  return np.concatenate(logps), np.concatenate(feats)


def weights(rows: np.ndarray) -> np.ndarray:
  return (rows[:, 1:] != data_lib.PAD).astype(np.float32)


# --- the evaluation sets --------------------------------------------------------------------------


class Sets:
  """The scored rows: test sequences per domain and switch sequences per pair, as named sets, and
  the groups the table reports: a domain, or one half of a switch pair (``'a→b/1'``,
  ``'a→b/2'``)."""

  def __init__(self, test: Mapping[str, np.ndarray], switch: Mapping[str, tuple[np.ndarray, int]]):
    self.rows = {**{d: r for d, r in test.items()}, **{p: r for p, (r, _) in switch.items()}}
    self.domains, self.switch = list(test), {p: s for p, (_, s) in switch.items()}
    self.masks = {name: weights(r) for name, r in self.rows.items()}

  def groups(self, logps: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {d: stats.sequence_nll(logps[d], self.masks[d]) for d in self.domains}
    for p, s in self.switch.items():
      mask = self.masks[p]
      first = mask * (np.arange(mask.shape[1]) < s)
      out[f"{p}/1"] = stats.sequence_nll(logps[p], first)
      out[f"{p}/2"] = stats.sequence_nll(logps[p], mask - first)
    return out

  def target_domains(self, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per set, the domain index of every target [N, T] (what an oracle knows)."""
    out = {d: np.full(self.masks[d].shape, k, np.int32) for k, d in enumerate(self.domains)}
    for p, s in self.switch.items():
      a, b = p.split("→")
      t = np.arange(self.masks[p].shape[1])
      out[p] = np.broadcast_to(
        np.where(t < s, names.index(a), names.index(b)), self.masks[p].shape
      ).astype(np.int32)
    return out


def _val_nll(logps: Mapping[str, np.ndarray], val: Mapping[str, np.ndarray]) -> float:
  """Mean over domains of the token-weighted NLL on validation (the selection criterion)."""
  return float(np.mean([bl.nll(logps[d], weights(val[d])) for d in val]))


# --- one seed -------------------------------------------------------------------------------------


class ExpertCache:
  """Each expert's target log-probs on every set, computed once per expert run (seeds share
  experts)."""

  def __init__(self, sets: Sets, val: Mapping[str, np.ndarray], router_rows: np.ndarray):
    self.sets, self.val, self.router_rows = sets, val, router_rows
    self.entries: dict[str, dict] = {}
    self.baselines: dict[tuple, tuple[dict, dict]] = {}  # experts' paths → training_free(...)

  def get(self, path: str) -> dict:
    if path not in self.entries:
      loaded = load_model(path)
      graphdef, params = loaded.graphdef, loaded.params
      fn = lm_scorer(graphdef)
      test = {name: score(fn, params, rows) for name, rows in self.sets.rows.items()}
      self.entries[path] = {
        "graphdef": graphdef,
        "params": params,
        "test": {name: lp for name, (lp, _) in test.items()},
        "features": {name: f for name, (_, f) in test.items()},
        "val": {d: score(fn, params, rows)[0] for d, rows in self.val.items()},
        "router_features": score(fn, params, self.router_rows)[1],
      }
    return self.entries[path]


def evaluate_seed(
  runs: Mapping,
  names: Sequence[str],
  sets: Sets,
  val: Mapping[str, np.ndarray],
  router_labels: np.ndarray,
  experts: ExpertCache,
  interp_steps: int,
  log=print,
) -> dict:
  """Per-sequence NLL sums per method and group for one seed's runs, plus what each method chose.
  The training-free methods depend on the experts alone: seeds that share them (pipeline.py) share
  those."""
  K = len(names)
  E = [experts.get(str(p)) for p in runs["experts"]]
  key = tuple(map(str, runs["experts"]))
  if key not in experts.baselines:
    experts.baselines[key] = training_free(E, names, sets, val, router_labels, interp_steps)
  scores, info = (dict(x) for x in experts.baselines[key])
  owner = sets.target_domains(names)

  def add(method, test_logps):
    scores[method] = sets.groups(test_logps)

  def per_set(fn):
    return {name: fn(name) for name in sets.rows}

  # Learned methods (superpose.train runs).
  info["alphas"], info["gates"] = {}, {}
  for name, workdir in runs.get("learned", {}).items():
    loaded = load_model(workdir)
    graphdef, theta, cfg = loaded.graphdef, loaded.params, loaded.config
    model = loaded.model
    method = method_of(cfg)
    if method == "merge":  # one transformer with the merged weights
      merged_graphdef, merged_params = nnx.split(model.merged_model(), nnx.Param, ...)[:2]
      fn = lm_scorer(merged_graphdef)
      add(name, per_set(lambda n: score(fn, merged_params, sets.rows[n])[0]))
      info["alphas"][name] = np.asarray(model.lam[...]).tolist()
      continue
    fn = model_scorer(graphdef)
    add(name, per_set(lambda n: score(fn, theta, sets.rows[n])[0]))
    if method == "trunk":  # the same deltas under an oracle gate: the ceiling of the learned gate
      onehot = {n: np.eye(K, dtype=np.float32)[owner[n]] for n in sets.rows}
      oracle_fn = model_scorer(graphdef)
      add(
        f"{name} (oracle gate)",
        per_set(
          lambda n: score(
            oracle_fn,
            theta,
            sets.rows[n],
            per_row=lambda i, b, n=n: {"gate_BTE": _pad_rows(onehot[n][i : i + b], b)},
          )[0]
        ),
      )
      info["gates"][name] = gate_trace(model, sets, names)
    else:
      info["alphas"][name] = np.asarray(model.alphas()).tolist()
      if name == "superposed":
        for k in range(
          K
        ):  # each expert forced everywhere with the AEs bypassed reproduces that expert
          alpha = jnp.float32(k) if K == 2 else jnp.eye(K, dtype=jnp.float32)[k]
          d0 = names[0]
          bypass = score(fn, theta, val[d0][:EVAL_BATCH], alpha=alpha, use_autoencoders=False)[0]
          diff = np.abs(bypass - E[k]["val"][d0][:EVAL_BATCH]) * weights(val[d0][:EVAL_BATCH])
          info[f"bypass expert {k} max |Δ log p|"] = float(diff.max())
  info["posterior_trace"] = posterior_trace(E, sets, names)
  log(
    "  seed done: "
    + ", ".join(
      f"{m} {np.mean([g[0].sum() / g[1].sum() for d, g in s.items() if d in names]):.3f}"
      for m, s in scores.items()
    )
  )
  return {"scores": scores, "info": info}


def training_free(
  E: Sequence[dict],
  names: Sequence[str],
  sets: Sets,
  val: Mapping[str, np.ndarray],
  router_labels: np.ndarray,
  interp_steps: int,
) -> tuple[dict, dict]:
  """(scores, info) of every method built from the experts without training: the experts, oracle
  routing, the causal sequence router, the mixtures, interpolation, task arithmetic and TIES."""
  K = len(names)
  thetas = [e["params"] for e in E]
  lm = lm_scorer(E[0]["graphdef"])
  scores, info = {}, {}

  def add(method, test_logps):
    scores[method] = sets.groups(test_logps)

  def per_set(fn):
    return {name: fn(name) for name in sets.rows}

  add("base", E[0]["test"])
  for k in range(1, K):
    add(f"expert:{names[k]}", E[k]["test"])
  owner = sets.target_domains(names)
  stacked = {name: np.stack([e["test"][name] for e in E]) for name in sets.rows}
  add("oracle", per_set(lambda n: np.take_along_axis(stacked[n], owner[n][None], 0)[0]))

  # The best single expert on validation: the router's default before it has read its prefix.
  default = int(np.argmin([_val_nll(e["val"], val) for e in E]))
  router = bl.fit_router(E[0]["router_features"], router_labels, K)
  choice = {name: router.predict(E[0]["features"][name]) for name in sets.rows}
  add(
    "router",
    per_set(
      lambda n: bl.causal_route([e["test"][n] for e in E], choice[n], ROUTER_PREFIX, default)
    ),
  )
  info["router_accuracy"] = {d: float((choice[d] == k).mean()) for k, d in enumerate(names)}
  info["router_default"] = names[default]

  val_by_domain = {d: ([e["val"][d] for e in E], weights(val[d])) for d in names}
  add(
    "mixture uniform",
    per_set(lambda n: bl.mixture_logprobs([e["test"][n] for e in E], [1 / K] * K)),
  )
  w_mix = min(
    bl.simplex_grid(K, 10),
    key=lambda w: _val_nll({d: bl.mixture_logprobs(val_by_domain[d][0], w) for d in names}, val),
  )
  add("mixture best", per_set(lambda n: bl.mixture_logprobs([e["test"][n] for e in E], w_mix)))
  info["mixture_weights"] = list(w_mix)
  add(
    "posterior mixture",
    per_set(lambda n: bl.posterior_mixture([e["test"][n] for e in E], sets.masks[n])[0]),
  )
  rate, _ = bl.best_rate(val_by_domain)
  add(
    "fixed share",
    per_set(lambda n: bl.fixed_share([e["test"][n] for e in E], sets.masks[n], rate)[0]),
  )
  info["fixed_share_rate"] = rate

  # Weight merges: the interpolation grid, task arithmetic, TIES; each chosen on validation.
  def merged(theta):
    return {
      "test": per_set(lambda n: score(lm, theta, sets.rows[n])[0]),
      "val": _val_nll({d: score(lm, theta, val[d])[0] for d in names}, val),
    }

  def best_of(candidates: Mapping, make) -> tuple:
    results = {c: merged(make(c)) for c in candidates}
    best = min(results, key=lambda c: results[c]["val"])
    return best, results[best]["test"], {str(c): r["val"] for c, r in results.items()}

  def interp(w):
    vertex = [k for k, x in enumerate(w) if x == 1.0]
    return thetas[vertex[0]] if vertex else bl.interpolate(thetas, w)

  best_w, lp, grid = best_of(bl.simplex_grid(K, interp_steps), interp)
  add("interp best", lp)
  info["best_interp"], info["interp_val_nll"] = list(best_w), grid
  lam, lp, _ = best_of(TA_LAMBDAS, lambda l: bl.task_arithmetic(thetas[0], thetas[1:], l))
  add("task arithmetic", lp)
  info["task arithmetic λ"] = lam
  if K >= 3:
    delta = bl.ties_merged_delta(thetas[0], thetas[1:], TIES_DENSITY)
    lam, lp, _ = best_of(TIES_LAMBDAS, lambda l: bl.add_scaled(thetas[0], delta, l))
    add("TIES", lp)
    info["TIES λ"] = lam

  return scores, info


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return (
    x if len(x) == rows else np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])
  )


SWITCH_TRACE_ROWS = 4


def gate_trace(model, sets: Sets, names) -> dict:
  """The trunk's gate probabilities on the first few sequences of each switch pair (for the
  plot)."""
  out = {}
  for p, s in sets.switch.items():
    rows = sets.rows[p][:SWITCH_TRACE_ROWS]
    probs = jax.jit(lambda m, t: m.gate_probs(t))(model, jnp.asarray(np.maximum(rows[:, :-1], 0)))
    out[p] = {"switch": int(s), "probs": np.asarray(probs).round(4).tolist()}
  return out


def posterior_trace(E, sets: Sets, names) -> dict:
  out = {}
  for p, s in sets.switch.items():
    lps = [e["test"][p][:SWITCH_TRACE_ROWS] for e in E]
    _, w = bl.posterior_mixture(lps, sets.masks[p][:SWITCH_TRACE_ROWS])
    out[p] = {"switch": int(s), "probs": np.asarray(w).round(4).tolist()}
  return out


# --- the whole evaluation -------------------------------------------------------------------------


def run(workdir: str | pathlib.Path, *, interp_steps: int | None = None, log=print) -> dict:
  """Evaluates every seed of ``workdir/pipeline.json`` (cached per seed), writes and prints the
  results."""
  from projects.superposed_experts import plots, report

  workdir = pathlib.Path(workdir)
  layout = json.loads((workdir / "pipeline.json").read_text("utf-8"))
  names = layout["domains"]
  K = len(names)
  interp_steps = interp_steps or (10 if K == 2 else 3)
  spec = data_lib.Spec(
    tuple(names),
    tuple(layout["train_paths"]),
    tuple(layout["val_paths"]),
    layout["tokenizer"],
    layout["seq_len"],
    2 * K,
    0,
  )
  val, val_manifest = data_lib.heldout(spec, data_lib.VAL_SEQUENCES, log=log)
  test, test_manifest = data_lib.heldout(
    spec.with_heldout(layout["test_paths"]),
    layout["eval_sequences"],
    cache=workdir / "eval_sequences",
    log=log,
  )
  from superpose.data.tokenizers import get_tokenizer

  switch = data_lib.switch_rows(
    test,
    switch_pairs(names),
    min(SWITCH_SEQUENCES, layout["eval_sequences"] // 2),
    bos_id=get_tokenizer(layout["tokenizer"]).bos_id,
  )
  sets = Sets(test, switch)
  switch_digest = hashlib.sha256(b"".join(r.tobytes() for r, _ in switch.values())).hexdigest()
  experts = None
  per_seed = {}
  for seed, runs in layout["seeds"].items():
    key = _cache_key(runs, test_manifest, val_manifest, switch_digest, interp_steps)
    cache = workdir / "eval" / f"seed_{seed}.json"
    if cache.exists() and json.loads(cache.read_text("utf-8")).get("key") == key:
      per_seed[seed] = _load(json.loads(cache.read_text("utf-8")))
      log(f"seed {seed}: cached evaluation")
      continue
    start = time.time()
    log(
      f"seed {seed}: evaluating {len(runs['experts'])} experts and {len(runs.get('learned', {}))} "
      "learned runs"
    )
    if experts is None:
      stream = data_lib.DomainStream(data_lib.training_rows(spec), K * ROUTER_TRAIN, 10_000)
      router_rows, router_labels = stream.rows_at(0)
      experts = ExpertCache(sets, val, router_rows)
    result = evaluate_seed(runs, names, sets, val, router_labels, experts, interp_steps, log=log)
    result.update(key=key, seconds=round(time.time() - start, 1))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(_dump(result)) + "\n", "utf-8")
    per_seed[seed] = result
  costs = cost_lib.method_costs(layout, per_seed, workdir)
  results = report.summarise(per_seed, names, sets, costs, test_manifest, val_manifest)
  (workdir / "results.json").write_text(json.dumps(results, indent=1) + "\n", "utf-8")
  text = report.markdown(results)
  (workdir / "results.md").write_text(text, "utf-8")
  results["plots"] = plots.write_all(results, workdir, log=log)
  log(text)
  return results


def _dump(result: dict) -> dict:
  out = dict(result)
  out["scores"] = {
    m: {g: [s.tolist(), c.tolist()] for g, (s, c) in groups.items()}
    for m, groups in result["scores"].items()
  }
  return out


def _load(cached: dict) -> dict:
  out = dict(cached)
  out["scores"] = {
    m: {g: (np.asarray(s, np.float64), np.asarray(c, np.int64)) for g, (s, c) in groups.items()}
    for m, groups in cached["scores"].items()
  }
  return out


def _cache_key(
  runs: Mapping, test_manifest: dict, val_manifest: dict, switch_digest: str, interp_steps: int
) -> str:
  """The runs' newest checkpoint steps and the sequences' hashes: a retrained run or new sequences
  invalidate a seed's cached scores."""

  def steps(workdir):
    d = ckpt_lib.checkpoint_dir(workdir)
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []

  paths = list(runs["experts"]) + list(runs.get("learned", {}).values())
  key = {
    "version": EVAL_VERSION,
    "runs": runs,
    "steps": [steps(p) for p in paths],
    "interp_steps": interp_steps,
    "test": test_manifest["sha256"],
    "val": val_manifest["sha256"],
    "switch": switch_digest,
  }
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m projects.superposed_experts.evaluate", description=__doc__.split("\n")[0]
  )
  ap.add_argument("--workdir", required=True, type=pathlib.Path)
  ap.add_argument(
    "--interp-steps", type=int, help="simplex grid resolution (default 10 for 2 experts, 3 for 3)"
  )
  args = ap.parse_args(argv)
  run(args.workdir, interp_steps=args.interp_steps)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
