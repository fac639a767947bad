"""Every method on the same held-out sequences: perplexity per domain and the gap closed (issue §4).

    python -m projects.superposed_experts.evaluate --workdir DIR      # DIR laid out by pipeline.py

``DIR/pipeline.json`` names the domains, their data files and, per seed, the runs: ``experts`` (one
workdir per domain, expert 0 = the base) and ``superposed`` ({method name: workdir}). The test
sequences are selected once into ``DIR/eval_sequences`` (.npy + sha256 manifest) and reused; each
seed's scores are cached in ``DIR/eval/seed_<s>.json`` under a key of its runs' checkpoints and the
sequences' hashes. Writes ``DIR/results.{json,md}`` and the plots, and prints the table.

Perplexity = exp(token-weighted mean NLL over a domain's sequences, padding masked). Every method
scores every token of every sequence; the sequence router reads the first ROUTER_PREFIX tokens and
its chosen expert then scores the whole sequence, those tokens included.
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
from projects.superposed_experts import data as data_lib
from superpose.nn import Transformer, hf_gpt2
from superpose.train import checkpoint as ckpt_lib
from superpose.train import lm as lm_train

EVAL_VERSION = 1             # bump when scoring changes: invalidates the per-seed caches
EVAL_BATCH = 64
ROUTER_PREFIX = 32           # tokens the sequence router reads
ROUTER_TRAIN = 256           # training sequences per domain that fit the router
TA_LAMBDAS = (1 / 3, 0.5, 0.75, 1.0)        # task arithmetic: 1/3 with 3 experts is the plain average
TIES_LAMBDAS = (0.5, 0.75, 1.0, 1.25)
TIES_DENSITY = 0.2


# --- loading and scoring ---------------------------------------------------------------------------

def is_hf_dir(path: pathlib.Path) -> bool:
  """A Hugging Face GPT-2 directory (weights beside config.json), not one of our workdirs."""
  names = (hf_gpt2.SAFETENSORS_NAME, hf_gpt2.PYTORCH_NAME, hf_gpt2.SAFETENSORS_NAME + ".index.json")
  return not ckpt_lib.checkpoint_dir(path).is_dir() and any((path / n).exists() for n in names)


def load_run(workdir: str | pathlib.Path):
  """(graphdef, params, config) of a run's newest checkpoint (a plain LM or a superposed model) or of
  a Hugging Face GPT-2 directory (the paper's experts)."""
  if is_hf_dir(pathlib.Path(workdir)):
    model_cfg, params = hf_gpt2.load_hf_gpt2(workdir)
    graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)[0]
    return graphdef, jax.tree.map(jnp.asarray, params), {"hf": str(workdir)}
  cfg = ckpt_lib.run_config(workdir)
  if "superposed" in cfg and cfg.get("trainer", "").endswith("superposed_experts.train"):
    from projects.superposed_experts import train as sx_train
    from projects.superposed_experts.model import Superposed
    model_cfg = sx_train.superposed_config(cfg)
    make = lambda: Superposed(model_cfg, rngs=nnx.Rngs(0))
  else:
    model_cfg = lm_train.model_config(cfg)
    make = lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))
  graphdef, params = ckpt_lib.restore_module(make, workdir)
  return graphdef, params, cfg


def target_logp(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]


def lm_scorer(graphdef) -> Callable:
  """jit(params, inputs, targets) -> (target log-probs, mean final state over the first
  ROUTER_PREFIX real inputs: the router's features)."""
  def fn(params, inputs, targets, real):
    out = nnx.merge(graphdef, params)(inputs)
    prefix = (real & (jnp.arange(inputs.shape[1]) < ROUTER_PREFIX))[..., None].astype(jnp.float32)
    feats = (out.final_hidden_BTD.astype(jnp.float32) * prefix).sum(1) / jnp.maximum(prefix.sum(1), 1.0)
    return target_logp(out.logits_BTV, targets), feats
  return jax.jit(fn)


def superposed_scorer(graphdef) -> Callable:
  def fn(params, inputs, targets, real, alpha, use_autoencoders):
    logits = nnx.merge(graphdef, params)(inputs, alpha=alpha, use_autoencoders=use_autoencoders)
    return target_logp(logits, targets), jnp.zeros((inputs.shape[0], 1))
  return jax.jit(fn, static_argnames=("use_autoencoders",))


def score(fn: Callable, params, rows: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """(target log-probs [N, T], features [N, D]) in fixed-size batches (one compilation)."""
  logps, feats = [], []
  for i in range(0, len(rows), EVAL_BATCH):
    chunk = rows[i:i + EVAL_BATCH]
    n = len(chunk)
    if n < EVAL_BATCH:
      chunk = np.concatenate([chunk, np.full((EVAL_BATCH - n,) + chunk.shape[1:], data_lib.PAD, chunk.dtype)])
    b = data_lib.to_batch(chunk, np.zeros(len(chunk)))
    lp, f = fn(params, b["inputs"], b["targets"], chunk[:, :-1] != data_lib.PAD, **kwargs)
    logps.append(np.asarray(lp)[:n])
    feats.append(np.asarray(f)[:n])
  return np.concatenate(logps), np.concatenate(feats)


def weights(rows: np.ndarray) -> np.ndarray:
  return (rows[:, 1:] != data_lib.PAD).astype(np.float32)


# --- one seed --------------------------------------------------------------------------------------

def evaluate_seed(runs: Mapping, names: Sequence[str], test: Mapping[str, np.ndarray], val: Mapping[str, np.ndarray],
                  router_rows: np.ndarray, router_labels: np.ndarray, interp_steps: int, log=print) -> dict:
  """Perplexity per method and domain for one seed's runs, plus what each method chose."""
  K = len(names)
  ppl = lambda lps: {d: bl.perplexity(lps[d], weights(test[d])) for d in names}
  experts = [load_run(p) for p in runs["experts"]]
  graphdef, thetas = experts[0][0], [p for _, p, _ in experts]
  lm = lm_scorer(graphdef)
  base_test = {d: score(lm, thetas[0], test[d]) for d in names}     # log-probs and router features
  test_lp = [{d: base_test[d][0] for d in names}] + [{d: score(lm, th, test[d])[0] for d in names}
                                                     for th in thetas[1:]]
  val_lp = [{d: score(lm, th, val[d])[0] for d in names} for th in thetas]
  out = {"ppl": {}, "info": {}}
  P = out["ppl"]
  P["base"] = ppl(test_lp[0])
  for k in range(1, K):
    P[f"expert:{names[k]}"] = ppl(test_lp[k])
  P["oracle"] = {d: P["base" if k == 0 else f"expert:{names[k]}"][d] for k, d in enumerate(names)}

  # Sequence router: logistic regression on the base model's prefix states.
  router = bl.fit_router(score(lm, thetas[0], router_rows)[1], router_labels, K)
  choice = {d: router.predict(base_test[d][1]) for d in names}
  P["router"] = ppl({d: bl.route([lp[d] for lp in test_lp], choice[d]) for d in names})
  out["info"]["router_accuracy"] = {d: float((choice[d] == k).mean()) for k, d in enumerate(names)}

  # Mixtures of next-token distributions: uniform, and the best fixed weights on validation.
  P["mixture uniform"] = ppl({d: bl.mixture_logprobs([lp[d] for lp in test_lp], [1 / K] * K) for d in names})
  w_mix, _ = bl.best_mixture({d: ([lp[d] for lp in val_lp], weights(val[d])) for d in names})
  P["mixture best"] = ppl({d: bl.mixture_logprobs([lp[d] for lp in test_lp], w_mix) for d in names})
  out["info"]["mixture_weights"] = list(w_mix)

  # Weight interpolation on the simplex grid (vertices are the experts themselves).
  interp = {}
  for w in bl.simplex_grid(K, interp_steps):
    vertex = [k for k, x in enumerate(w) if x == 1.0]
    if vertex:
      interp[w] = ppl(test_lp[vertex[0]])
    else:
      theta = bl.interpolate(thetas, w)
      interp[w] = ppl({d: score(lm, theta, test[d])[0] for d in names})
    P[interp_name(w)] = interp[w]
  best = bl.best_interpolation(interp)
  P["interp best"] = interp[best]
  out["info"]["best_interp"] = list(best)

  if K >= 3:   # with one task vector both merges are points of the interpolation line
    delta = bl.ties_merged_delta(thetas[0], thetas[1:], TIES_DENSITY)
    for name, make, lams in (("task arithmetic", lambda l: bl.task_arithmetic(thetas[0], thetas[1:], l), TA_LAMBDAS),
                             ("TIES", lambda l: bl.add_scaled(thetas[0], delta, l), TIES_LAMBDAS)):
      val_ppl = {l: np.mean([bl.perplexity(score(lm, make(l), val[d])[0], weights(val[d])) for d in names])
                 for l in lams}
      lam = min(val_ppl, key=val_ppl.get)
      P[name] = ppl({d: score(lm, make(lam), test[d])[0] for d in names})
      out["info"][f"{name} λ"] = lam

  out["alphas"] = {}
  for method, workdir in runs.get("superposed", {}).items():
    g, theta, _ = load_run(workdir)
    sup = superposed_scorer(g)
    P[method] = ppl({d: score(sup, theta, test[d], alpha=None, use_autoencoders=True)[0] for d in names})
    out["alphas"][method] = np.asarray(nnx.merge(g, theta).alphas()).tolist()
    if method != "superposed":
      continue
    for k in range(K):   # each expert forced everywhere: with the AEs, and (a check) without
      alpha = forced_alpha(k, K)
      P[f"superposed {forced_name(k, K)}"] = ppl({d: score(sup, theta, test[d], alpha=alpha, use_autoencoders=True)[0]
                                                  for d in names})
      d0 = names[0]
      bypass = score(sup, theta, val[d0][:EVAL_BATCH], alpha=alpha, use_autoencoders=False)[0]
      diff = np.abs(bypass - val_lp[k][d0][:EVAL_BATCH]) * weights(val[d0][:EVAL_BATCH])
      out["info"][f"bypass {forced_name(k, K)} max |Δ log p| vs expert {k}"] = float(diff.max())
  log(f"  seed done: " + ", ".join(f"{m} {np.mean(list(v.values())):.3f}" for m, v in P.items()
                                     if not m.startswith("interp λ") and not m.startswith("interp w")))
  return out


def forced_alpha(k: int, K: int):
  return jnp.float32(k) if K == 2 else jnp.eye(K, dtype=jnp.float32)[k]


def forced_name(k: int, K: int) -> str:
  return f"α={k}" if K == 2 else f"w=e{k}"


def interp_name(w: Sequence[float]) -> str:
  return f"interp λ={w[1]:.1f}" if len(w) == 2 else "interp w=(" + ",".join(f"{x:.2f}" for x in w) + ")"


# --- the whole evaluation --------------------------------------------------------------------------

def run(workdir: str | pathlib.Path, *, interp_steps: int | None = None, log=print) -> dict:
  """Evaluates every seed of ``workdir/pipeline.json`` (cached per seed), writes and prints the results."""
  from projects.superposed_experts import plots
  workdir = pathlib.Path(workdir)
  layout = json.loads((workdir / "pipeline.json").read_text("utf-8"))
  names = layout["domains"]
  K = len(names)
  interp_steps = interp_steps or (10 if K == 2 else 3)
  spec = data_lib.Spec(tuple(names), tuple(layout["train_paths"]), tuple(layout["val_paths"]), layout["tokenizer"],
                       layout["seq_len"], 2 * K, 0)
  val, val_manifest = data_lib.heldout(spec, data_lib.VAL_SEQUENCES, log=log)
  test, test_manifest = data_lib.heldout(spec.with_heldout(layout["test_paths"]), layout["eval_sequences"],
                                         cache=workdir / "eval_sequences", log=log)
  train_rows = None            # read only when a seed is not cached (the router's training sequences)
  per_seed = {}
  for seed, runs in layout["seeds"].items():
    key = _cache_key(runs, test_manifest, val_manifest, interp_steps)
    cache = workdir / "eval" / f"seed_{seed}.json"
    if cache.exists() and json.loads(cache.read_text("utf-8")).get("key") == key:
      per_seed[seed] = json.loads(cache.read_text("utf-8"))
      log(f"seed {seed}: cached evaluation")
      continue
    start = time.time()
    log(f"seed {seed}: evaluating {len(runs['experts'])} experts and {len(runs.get('superposed', {}))} superposed runs")
    train_rows = train_rows or data_lib.training_rows(spec)
    stream = data_lib.DomainStream(train_rows, K * ROUTER_TRAIN, 10_000 + int(seed))
    rows, labels = stream.rows_at(0)
    result = evaluate_seed(runs, names, test, val, rows, labels, interp_steps, log=log)
    result.update(key=key, seconds=round(time.time() - start, 1))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    per_seed[seed] = result
  results = summarise(per_seed, names, test, test_manifest, val_manifest)
  (workdir / "results.json").write_text(json.dumps(results, indent=1) + "\n", "utf-8")
  text = markdown(results)
  (workdir / "results.md").write_text(text, "utf-8")
  results["plots"] = plots.write_all(results, workdir, log=log)
  log(text)
  return results


# --- summary and table -----------------------------------------------------------------------------

def _stats(xs: Sequence[float]) -> dict:
  return {"mean": float(np.mean(xs)), "min": float(np.min(xs)), "max": float(np.max(xs)),
          "values": list(map(float, xs))}


def summarise(per_seed: Mapping[str, dict], names: Sequence[str], test: Mapping[str, np.ndarray], test_manifest: dict,
              val_manifest: dict) -> dict:
  """Mean and min–max over seeds of each method's perplexity per domain, of its mean over domains
  and of the fraction of the gap it closes (each seed against its own best interpolation and oracle)."""
  seeds = sorted(per_seed, key=int)
  methods = [m for m in per_seed[seeds[0]]["ppl"] if all(m in per_seed[s]["ppl"] for s in seeds)]
  table = {}
  for m in methods:
    per = [per_seed[s]["ppl"][m] for s in seeds]
    gaps = [bl.gap_fraction(per_seed[s]["ppl"][m], per_seed[s]["ppl"]["interp best"], per_seed[s]["ppl"]["oracle"])
            for s in seeds]
    by_domain = {d: _stats([bl.gap_fraction({d: p[d]}, {d: per_seed[s]["ppl"]["interp best"][d]},
                                            {d: per_seed[s]["ppl"]["oracle"][d]}) for s, p in zip(seeds, per)])
                 for d in names}
    table[m] = {"ppl": {d: _stats([p[d] for p in per]) for d in names},
                "mean_ppl": _stats([np.mean([p[d] for d in names]) for p in per]), "gap": _stats(gaps),
                "gap_per_domain": by_domain}
  tokens = {d: int(weights(test[d]).sum()) for d in names}
  return {"domains": list(names), "seeds": seeds, "methods": table, "order": _order(methods, names),
          "per_seed": {s: {k: v for k, v in per_seed[s].items() if k != "key"} for s in seeds},
          "test_sequences": {"stats": test_manifest["stats"], "sha256": test_manifest["sha256"], "tokens": tokens},
          "val_sequences": {"stats": val_manifest["stats"], "sha256": val_manifest["sha256"]},
          "spread": "min–max over seeds"}


def _order(methods: Sequence[str], names: Sequence[str]) -> list[str]:
  first = (["base"] + [f"expert:{d}" for d in names[1:]] + ["oracle", "router", "mixture best", "mixture uniform",
           "superposed", "superposed_router"] + [m for m in methods if m.startswith("superposed ")] +
           ["blend_only", "task arithmetic", "TIES", "interp best"])
  known = [m for m in first if m in methods]
  return known + [m for m in methods if m not in known]


LABELS = {"base": "base (expert 0)", "oracle": "oracle routing (own domain's expert)",
          "router": "sequence router (logistic regression on the prefix)", "mixture best":
          "mixture of distributions, best fixed weights (val)", "mixture uniform": "mixture of distributions, uniform",
          "superposed": "**superposed (learned α)**", "superposed_router": "superposed, per-token router α",
          "blend_only": "blend only (no autoencoders)", "task arithmetic": "task arithmetic (λ on val)",
          "TIES": "TIES (top 20 %, λ on val)", "interp best": "best linear interpolation"}


def markdown(results: Mapping) -> str:
  names, table, per_seed = results["domains"], results["methods"], results["per_seed"]
  fmt = lambda st, p=3: f"{st['mean']:.{p}f} ({st['min']:.{p}f}–{st['max']:.{p}f})"
  head = "| method | " + " | ".join(f"{d} ppl" for d in names) + " | mean ppl | gap closed |"
  lines = [f"# Superposed experts: {len(names)} domains, {len(results['seeds'])} seeds", "",
           f"Perplexity per domain (token-weighted, padding masked) on the same held-out test sequences for "
           f"every method; each cell is the mean over seeds ({results['spread']}). *Gap closed* = mean over "
           f"domains of (ppl_best_interp − ppl_method) / (ppl_best_interp − ppl_oracle), per seed; the best "
           f"interpolation is the grid point with the lowest arithmetic mean of the domains' perplexities "
           f"(chosen on test, so the baseline is as strong as it can be).", "", head,
           "|" + "---|" * (len(names) + 3)]
  for m in results["order"]:
    r = table[m]
    label = LABELS.get(m, m.replace("expert:", "expert: "))
    if m == "interp best":
      label += " (" + ", ".join(sorted({_w(per_seed[s]["info"]["best_interp"]) for s in results["seeds"]})) + ")"
    lines.append(f"| {label} | " + " | ".join(fmt(r["ppl"][d]) for d in names) +
                 f" | {fmt(r['mean_ppl'])} | {fmt(r['gap'], 2)} |")
  lines += ["", "## What the numbers say", ""] + _verdict(results) + ["", "## Details", ""]
  for s in results["seeds"]:
    info = per_seed[s]["info"]
    extras = "; ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()
                       if k not in ("router_accuracy", "best_interp", "mixture_weights"))
    lines.append(f"- seed {s}: best interpolation {_w(info['best_interp'])}; mixture weights (val) "
                 f"{_w(info['mixture_weights'])}; router accuracy " +
                 ", ".join(f"{d} {a:.1%}" for d, a in info["router_accuracy"].items()) +
                 (f"; {extras}" if extras else "") + f"; {per_seed[s].get('seconds', 0):.0f} s")
  ts = results["test_sequences"]
  lines.append("- test sequences per domain: " + ", ".join(
      f"{d} {st['kept']} ({ts['tokens'][d]:,} target tokens; of {st['candidates']:,} rows: {st['short']} short, "
      f"{st['repeated']} repeated, {st['verbatim_in_train']} found verbatim in training text; sha256 "
      f"{ts['sha256'][d][:12]})" for d, st in ts["stats"].items()))
  return "\n".join(lines) + "\n"


def _w(w) -> str:
  """λ (the expert's weight) for two models, the weight vector otherwise."""
  return f"λ={w[1]:.1f}" if len(w) == 2 else "w=(" + ", ".join(f"{x:.2f}" for x in w) + ")"


def _verdict(results: Mapping) -> list[str]:
  """Plain sentences: the headline fraction, and where the superposition loses to the output-space methods."""
  names, table = results["domains"], results["methods"]
  if "superposed" not in table:
    return ["No superposed run was evaluated."]
  sup = table["superposed"]
  g = sup["gap"]
  out = [f"- Headline: the superposed model (learned α) closes **{g['mean']:.0%}** of the gap between the best "
         f"linear interpolation and oracle routing (seeds: {', '.join(f'{v:.0%}' for v in g['values'])})."]
  for m in ("mixture best", "mixture uniform", "router", "oracle", "superposed_router", "blend_only"):
    if m not in table:
      continue
    worse = [d for d in names if sup["ppl"][d]["mean"] > table[m]["ppl"][d]["mean"]]
    pairs = ", ".join(f"{d} {sup['ppl'][d]['mean']:.3f} vs {table[m]['ppl'][d]['mean']:.3f}" for d in (worse or names))
    verb = f"loses to the {LABELS[m].strip('*')} on {', '.join(worse)}" if worse else \
        f"is at least as good as the {LABELS[m].strip('*')} on every domain"
    out.append(f"- The superposed model {verb} ({pairs}); gap closed {g['mean']:.0%} vs {table[m]['gap']['mean']:.0%}.")
  return out


def _cache_key(runs: Mapping, test_manifest: dict, val_manifest: dict, interp_steps: int) -> str:
  """The runs' newest checkpoint steps and the sequences' hashes: a retrained run or new sequences
  invalidate a seed's cached scores."""
  def steps(workdir):
    d = ckpt_lib.checkpoint_dir(workdir)
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []
  paths = list(runs["experts"]) + list(runs.get("superposed", {}).values())
  key = {"version": EVAL_VERSION, "runs": runs, "steps": [steps(p) for p in paths], "interp_steps": interp_steps,
         "test": test_manifest["sha256"], "val": val_manifest["sha256"]}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m projects.superposed_experts.evaluate",
                               description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, type=pathlib.Path)
  ap.add_argument("--interp-steps", type=int, help="simplex grid resolution (default 10 for 2 experts, 3 for 3)")
  args = ap.parse_args(argv)
  run(args.workdir, interp_steps=args.interp_steps)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
