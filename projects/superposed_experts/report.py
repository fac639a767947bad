"""The results of an evaluation as one dict (results.json) and a Markdown report (results.md).

``summarise`` turns the per-seed, per-sequence NLL sums of evaluate.py into point estimates with
paired bootstrap intervals (stats.summarise), adds each method's cost (cost.py) and the old headline
definition for comparison; ``markdown`` writes the tables and says, in plain sentences, which method
wins at each cost and whether the issue's targets are met.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from projects.superposed_experts import baselines as bl
from projects.superposed_experts import stats

# Cost bands for "who wins at this cost" (measured time per token ÷ one expert's, or FLOPs where
# unmeasured).
BANDS = ((1.05, "one model (≤ 1.05×)"), (1.2, "≤ 1.2×"), (2.2, "≤ 2.2×"), (math.inf, "any cost"))
TRUNK_TARGET_GAP, TRUNK_TARGET_COST = 0.5, 1.2

LABELS = {
  "base": "base (expert 0)",
  "oracle": "oracle routing (knows each token's domain)",
  "router": "sequence router (reads 32 tokens, then commits)",
  "mixture uniform": "mixture, uniform weights",
  "mixture best": "mixture, best fixed weights (val)",
  "posterior mixture": "posterior (Bayesian) mixture",
  "fixed share": "fixed-share mixture (rate on val)",
  "interp best": "best interpolation (val)",
  "task arithmetic": "task arithmetic (λ on val)",
  "TIES": "TIES (top 20 %, λ on val)",
  "superposed": "paper: superposition (sequential training)",
  "superposed_tf": "paper: superposition (teacher-forced, the notebook's)",
  "blend_only": "paper: blend only, no autoencoders",
  "superposed_router": "paper + per-token router α",
  "merge": "learned per-layer merge (AdaMerging-style)",
}


def label(m: str) -> str:
  if m in LABELS:
    return LABELS[m]
  if m.startswith("trunk"):
    return "**one trunk + deltas, " + m.removeprefix("trunk").strip(" _") + "**"
  return m.replace("expert:", "expert: ")


def summarise(
  per_seed: Mapping,
  names: Sequence[str],
  sets,
  costs: Mapping,
  test_manifest: dict,
  val_manifest: dict,
) -> dict:
  seeds = sorted(per_seed, key=int)
  methods = [
    m for m in per_seed[seeds[0]]["scores"] if all(m in per_seed[s]["scores"] for s in seeds)
  ]
  scores = {m: {s: per_seed[s]["scores"][m] for s in seeds} for m in methods}
  experts = {names[0]: "base", **{d: f"expert:{d}" for d in names[1:]}}
  table = stats.summarise(
    scores, reference="interp best", oracle="oracle", experts=experts, mean_over=list(names)
  )
  for m, entry in table[
    "methods"
  ].items():  # the old headline: mean over domains of perplexity-ratio gaps
    ppl = {d: math.exp(entry["nll"][d]["value"]) for d in names}
    ref = {d: math.exp(table["methods"]["interp best"]["nll"][d]["value"]) for d in names}
    orc = {d: math.exp(table["methods"]["oracle"]["nll"][d]["value"]) for d in names}
    entry["gap_old"] = bl.gap_fraction(ppl, ref, orc)
    entry["ppl"] = ppl
  vs_posterior = {}
  for m in methods:
    if m != "posterior mixture":
      vs_posterior[m] = stats.paired_difference(
        scores, m, "posterior mixture", mean_over=list(names)
      )["mean_nll"]
  return {
    "domains": list(names),
    "switch_pairs": list(sets.switch),
    "seeds": seeds,
    "table": table,
    "costs": dict(costs),
    "vs_posterior": vs_posterior,
    "order": order(methods, costs),
    "info": {s: per_seed[s]["info"] for s in seeds},
    "seconds": {s: per_seed[s].get("seconds") for s in seeds},
    "test_sequences": {"stats": test_manifest["stats"], "sha256": test_manifest["sha256"]},
    "val_sequences": {"stats": val_manifest["stats"], "sha256": val_manifest["sha256"]},
  }


def cost_of(c: Mapping) -> float:
  """Time per token in units of one expert's: measured where bench.py measured it, else FLOPs."""
  return c["measured_ratio"] if c.get("measured_ratio") else c["flops_ratio"]


def order(methods: Sequence[str], costs: Mapping) -> list[str]:
  fixed = ["oracle", "base"] + [m for m in methods if m.startswith("expert:")]
  rest = sorted(
    (m for m in methods if m not in fixed), key=lambda m: (round(cost_of(costs[m]), 2), m)
  )
  return [m for m in fixed if m in methods] + rest


def _iv(x: Mapping, p: int = 3) -> str:
  return f"{x['value']:.{p}f} [{x['low']:.{p}f}, {x['high']:.{p}f}]"


def _switch_halves(table: Mapping, m: str, pairs: Sequence[str]) -> str:
  first = np.mean([table["methods"][m]["nll"][f"{p}/1"]["value"] for p in pairs])
  second = np.mean([table["methods"][m]["nll"][f"{p}/2"]["value"] for p in pairs])
  return f"{first:.3f} / {second:.3f}"


def markdown(results: Mapping) -> str:
  names, table, costs = results["domains"], results["table"], results["costs"]
  pairs, seeds = results["switch_pairs"], results["seeds"]
  T = table["methods"]
  measured = any(c.get("measured_ratio") for c in costs.values())
  lines = [
    f"# Superposed experts: {len(names)} domains ({', '.join(names)}), {len(seeds)} seeds",
    "",
    "NLL in nats per token (a token is a byte here), token-weighted per domain, averaged over "
    "seeds; "
    f"[95 % interval]: {table['interval']}, {table['n_boot']} replicates. Every method scores "
    "exactly the "
    "same target tokens. *Gap closed* = (NLL_interp − NLL_method) / (NLL_interp − NLL_oracle) on "
    "the mean "
    "NLL over domains, the interpolation chosen on validation by the same criterion; *old gap* = "
    "the "
    "previous definition (mean over domains of per-domain perplexity ratios), for comparison only. "
    "*Forgetting* = NLL on a domain minus that domain's own expert. *Switch* = the switch set "
    f"({', '.join(pairs)}; the domain changes half-way), NLL of the first / second half averaged "
    "over pairs. "
    "*Cost* = time per token ÷ one expert's, measured side by side by bench.py"
    + ("" if measured else " (not measured for this table: FLOPs ratio shown)")
    + "; FLOPs = per-token forward FLOPs ÷ one expert's; MB = parameters a server holds (f32).",
    "",
  ]
  head = (
    "| method | cost | FLOPs | MB | "
    + " | ".join(f"{d} NLL" for d in names)
    + " | mean NLL | gap closed | old gap | forgetting "
    + " / ".join(d[:2] for d in names)
    + " | switch 1st / 2nd |"
  )
  lines += [head, "|" + "---|" * (len(names) + 9)]
  for m in results["order"]:
    c, r = costs[m], T[m]
    cost = f"{c['measured_ratio']:.2f}×" if c.get("measured_ratio") else "—"
    forget = " / ".join(f"{r['forgetting'][d]['value']:+.3f}" for d in names)
    lines.append(
      f"| {label(m)} | {cost} | {c['flops_ratio']:.2f}× | {c['param_bytes'] / 1e6:.1f} | "
      + " | ".join(_iv(r["nll"][d]) for d in names)
      + f" | {_iv(r['mean_nll'])} | {_iv(r['gap'], 2)} | {r['gap_old']:.2f} | {forget} | "
      f"{_switch_halves(table, m, pairs)} |"
    )
  lines += ["", "## Who wins at each cost", ""] + verdict(results)
  lines += [
    "",
    "## The switch set, per pair and half (NLL [95 %])",
    "",
    "| method | " + " | ".join(f"{p} {h}" for p in pairs for h in ("1st", "2nd")) + " |",
    "|" + "---|" * (2 * len(pairs) + 1),
  ]
  for m in results["order"]:
    lines.append(
      f"| {label(m)} | "
      + " | ".join(_iv(T[m]["nll"][f"{p}/{h}"]) for p in pairs for h in (1, 2))
      + " |"
    )
  lines += ["", "## Details", ""]
  for s in seeds:
    info = results["info"][s]
    lines.append(
      f"- seed {s}: best interpolation {info['best_interp']}; task arithmetic λ "
      f"{info['task arithmetic λ']}"
      + (f"; TIES λ {info['TIES λ']}" if "TIES λ" in info else "")
      + f"; mixture weights {info['mixture_weights']}; fixed-share rate "
      f"{info['fixed_share_rate']}; "
      f"router default {info['router_default']}, accuracy "
      + ", ".join(f"{d} {a:.1%}" for d, a in info["router_accuracy"].items())
      + "".join(f"; {k} {v:.2g}" for k, v in info.items() if k.startswith("bypass"))
      + f"; {results['seconds'].get(s) or 0:.0f} s"
    )
  ts = results["test_sequences"]
  lines.append(
    "- test sequences per domain: "
    + ", ".join(
      f"{d} {st['kept']} ({table['tokens'][d]:,} target tokens; of {st['candidates']:,} rows: "
      f"{st['short']} short, "
      f"{st['repeated']} repeated, {st['verbatim_in_train']} found verbatim in training text; "
      "sha256 "
      f"{ts['sha256'][d][:12]})"
      for d, st in ts["stats"].items()
    )
  )
  lines.append(
    "- switch set: " + ", ".join(f"{p} {table['sequences'][p + '/1']} sequences" for p in pairs)
  )
  speeds = {c["bench"]: c["tok_s"] for c in costs.values() if c.get("tok_s")}
  if speeds:
    names_of = {
      "single": "one expert (every single-model method)",
      "ensemble": "every expert + their mixture",
    }
    lines.append(
      "- measured inference speed (bench.py, batch 16 × the sequence length, tokens/s): "
      + ", ".join(
        f"{names_of.get(k) or label(k).strip('*')} {v:,.0f}"
        for k, v in sorted(speeds.items(), key=lambda kv: -kv[1])
      )
    )
  return "\n".join(lines) + "\n"


def verdict(results: Mapping) -> list[str]:
  """Plain sentences: the best method in each cost band, the one-trunk target, the posterior-mixture
  target."""
  T, costs = results["table"]["methods"], results["costs"]
  candidates = [m for m in T if m != "oracle" and not m.endswith("(oracle gate)")]
  out = []
  for limit, name in BANDS:
    inside = [m for m in candidates if cost_of(costs[m]) <= limit]
    if inside:
      best = min(inside, key=lambda m: T[m]["mean_nll"]["value"])
      out.append(
        f"- {name}: **{label(best).strip('*')}**, mean NLL {_iv(T[best]['mean_nll'])}, gap closed "
        f"{_iv(T[best]['gap'], 2)} at {cost_of(costs[best]):.2f}×."
      )
  trunks = [m for m in candidates if m.startswith("trunk")]
  for m in trunks:
    g, c = T[m]["gap"], cost_of(costs[m])
    ok = g["value"] >= TRUNK_TARGET_GAP and c <= TRUNK_TARGET_COST
    out.append(
      f"- Target (one trunk ≥ {TRUNK_TARGET_GAP:.0%} of the gap at ≤ {TRUNK_TARGET_COST}×): "
      f"{label(m).strip('*')} "
      f"closes {_iv(g, 2)} at {c:.2f}× — **{'met' if ok else 'not met'}**."
    )
  within = [m for m in candidates if cost_of(costs[m]) <= 2.2 and m != "posterior mixture"]
  if within and "posterior mixture" in T:
    best = min(within, key=lambda m: T[m]["mean_nll"]["value"])
    d = results["vs_posterior"][best]
    outcome = (
      "beats it: met"
      if d["high"] < 0
      else "matches it (0 inside the interval): met"
      if d["low"] <= 0
      else "loses to it: not met"
    )
    out.append(
      "- Target (the best method at ≤ 2.2× matches or beats the posterior mixture): "
      f"{label(best).strip('*')} "
      f"− posterior mixture = {_iv(d, 4)} nats, paired — **{outcome}**."
    )
  for m in ("superposed", "superposed_tf", "blend_only"):
    if m in T:
      out.append(
        f"- {label(m)}: gap closed {_iv(T[m]['gap'], 2)} at {cost_of(costs[m]):.2f}×, forgetting "
        + ", ".join(f"{d} {T[m]['forgetting'][d]['value']:+.3f}" for d in results["domains"])
        + "."
      )
  return out
