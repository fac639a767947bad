"""The Reasoning-by-Superposition 2-layer construction (spec §3) as weights of
``superpose.nn.Transformer``.

    python -m projects.continuous_cot.construction [--data ../shared/data/prosqa] [--layout code]

Residual layout, d = 3·V + P (V = 40 tokens, P sinusoidal dims): [content | buffer1 | buffer2 |
pos]. Token embeddings are one-hot in content; positions (``position_dims=P``) live only in pos.
Every block is ``h ← l2norm(MLP(h + Σ_heads attn(h)))`` (attn_norm 'none', mlp_norm 'post', norm
'l2', no MLP residual, step activation, attention scale 1; a threshold ε per layer is the MLP bias
−ε with ``step_threshold=0``).

Layer 1, five "attention choosers" (token set X, lag ℓ): a query whose content is in X attends to
position i−ℓ, any other query to <eos> at position 0, whose value is zeroed. Heads: (edge
markers, 2) → buffer1 (the edge's source), (edge markers, 1) → buffer2 (its target), ([R], 2) and
([R], 1) → buffer2 (the candidates), ([A], 1) → buffer1 (the last thought). The RS code drops the
last edge's ``|``; in that 'code' layout [Q] also marks an edge (it follows s_m t_m), so both
layouts work with five heads. Layer 2, one head: content queries buffer1 keys (×τ; [R] also keys on
u_[A]), values read buffer2 into content: a thought adds the targets of all edges leaving its
reachable set, [A] picks up c1 + c2. Thought c is then (1/√|V_c|) Σ_{v ∈ V_c} u_v, and at [A] the
logit of the reachable candidate is 2/·, every other token's at most 1/· (Theorem 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose import nn

from projects.continuous_cot import data as data_lib
from projects.continuous_cot import graphs
from projects.continuous_cot import metrics as metrics_lib

V = data_lib.VOCAB.vocab_size


@dataclasses.dataclass(frozen=True)
class Construction:
  position_dims: int = 64
  max_seq_len: int = 256
  margin: float = 15.0  # layer-1 logit gap to the next-best key (sets η)
  tau: float = 200.0  # layer-2 key scale
  n_max: int = graphs.MAX_NODES
  layout: str = "code"

  @property
  def d_model(self) -> int:
    return 3 * V + self.position_dims

  @property
  def eps1(self) -> float:  # the paper's 1/(2√n)
    return 1 / (2 * math.sqrt(self.n_max))

  @property
  def eps2(self) -> float:  # the paper's 1/(4n)
    return 1 / (4 * self.n_max)

  def config(self) -> nn.TransformerConfig:
    return nn.TransformerConfig(
      vocab_size=V,
      vocab_multiple=8,
      d_model=self.d_model,
      num_layers=2,
      num_heads=5,
      head_dim=max(2 * self.position_dims, V),
      d_ff=3 * V,
      max_seq_len=self.max_seq_len,
      norm="l2",
      attn_norm="none",
      mlp_norm="post",
      final_norm=True,
      mlp_residual=False,
      activation="step",
      step_threshold=0.0,
      attn_scale="one",
      positions="sinusoidal",
      position_dims=self.position_dims,
      tie_embeddings=True,
      use_bias=True,
      init_std=0.0,
    )


def _table(c: Construction) -> np.ndarray:
  """The positional table the model adds (layers.sinusoidal), in float64: (max_seq_len, P)."""
  p = c.position_dims
  freqs = 10_000.0 ** (-np.arange(0, p, 2) / p)
  angles = np.arange(c.max_seq_len)[:, None] * freqs
  return np.stack([np.sin(angles), np.cos(angles)], -1).reshape(c.max_seq_len, p), freqs


def _rotation(freqs: np.ndarray, lag: int) -> np.ndarray:
  """R with R @ p_j = p_{j+lag} for the interleaved [sin, cos] table."""
  r = np.zeros((2 * len(freqs),) * 2)
  for i, w in enumerate(freqs):
    cs, sn = math.cos(lag * w), math.sin(lag * w)
    r[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = [[cs, sn], [-sn, cs]]
  return r


def chooser_constants(c: Construction) -> tuple[float, float]:
  """(η, ξ): ξ = max_j 2P / (⟨p0,p0⟩ − ⟨p0,pj⟩) (Lemma 1); η so the best key leads the next by
  ``margin``."""
  table, _ = _table(c)
  gram0 = table @ table[0]
  xi = float(np.max(2 * c.position_dims / (gram0[0] - gram0[1:])))
  gap = float(np.min(gram0[0] - gram0[1:]))  # ⟨p_i,p_i⟩ − ⟨p_i,p_{i+δ}⟩ depends on δ only
  return c.margin / gap, xi


def weights(c: Construction) -> dict:
  """The numpy weights by parameter path (everything else is zero)."""
  P, D, H = c.position_dims, c.d_model, max(2 * c.position_dims, V)
  content, buf1, buf2, pos = 0, V, 2 * V, 3 * V
  eye = np.eye(V)
  table, freqs = _table(c)
  eta, xi = chooser_constants(c)
  edge_marks = ["|", "[Q]"] if c.layout == "code" else ["|"]
  heads = [
    (edge_marks, 2, buf1),
    (edge_marks, 1, buf2),
    (["[R]"], 2, buf2),
    (["[R]"], 1, buf2),
    (["[A]"], 1, buf1),
  ]
  emb = np.zeros((V, D))
  emb[:, :V] = eye
  q1, k1, v1, o1 = (
    np.zeros((D, 5, H)),
    np.zeros((D, 5, H)),
    np.zeros((D, 5, H)),
    np.zeros((5, H, D)),
  )
  for h, (marks, lag, buffer) in enumerate(heads):
    chosen = [data_lib.VOCAB.id_of(m) for m in marks]
    q1[pos : pos + P, h, :P] = np.eye(P)  # q = [p_i ; ξ⟨u_x̄, h_i⟩ p_0]
    others = [t for t in range(V) if t not in chosen]
    q1[np.array(others), h, P : 2 * P] = xi * table[0]
    k1[pos : pos + P, h, :P] = eta * _rotation(freqs, lag).T  # k = [η p_{j+ℓ} ; η p_j]
    k1[pos : pos + P, h, P : 2 * P] = eta * np.eye(P)
    v1[content : content + V, h, :V] = eye
    v1[data_lib.BOS, h, data_lib.BOS] = 0.0  # the sink adds nothing
    o1[h, :V, buffer : buffer + V] = eye
  wi1 = np.zeros((D, 3 * V))
  for s in range(3):
    wi1[s * V : (s + 1) * V, s * V : (s + 1) * V] = eye
  q2, k2, v2, o2 = (
    np.zeros((D, 5, H)),
    np.zeros((D, 5, H)),
    np.zeros((D, 5, H)),
    np.zeros((5, H, D)),
  )
  q2[content : content + V, 0, :V] = eye
  k2[buf1 : buf1 + V, 0, :V] = c.tau * eye
  k2[data_lib.ROOT, 0, data_lib.ANSWER] = c.tau  # [R] answers [A]'s query
  v2[buf2 : buf2 + V, 0, :V] = eye
  o2[0, :V, content : content + V] = eye
  wi2, wo2 = np.zeros((D, 3 * V)), np.zeros((3 * V, D))
  wi2[:V, :V], wi2[buf1 : buf1 + V, V : 2 * V] = eye, eye
  wo2[:V, :V], wo2[V : 2 * V, :V] = eye, eye
  return {
    "token_embedding": emb,
    ("blocks", 0, "attn"): dict(q=q1, k=k1, v=v1, o=o1),
    ("blocks", 0, "mlp"): dict(wi=wi1, wo=wi1.T, wi_bias=np.full(3 * V, -c.eps1)),
    ("blocks", 1, "attn"): dict(q=q2, k=k2, v=v2, o=o2),
    ("blocks", 1, "mlp"): dict(wi=wi2, wo=wo2, wi_bias=np.full(3 * V, -c.eps2)),
  }


def build(c: Construction = Construction()) -> nn.Transformer:
  cfg = c.config()
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: nn.Transformer(cfg, rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract))
  for key, value in weights(c).items():
    if key == "token_embedding":
      model.token_embedding.value = jnp.asarray(value, jnp.float32)
      continue
    module = model.blocks[key[1]]
    module = getattr(module, key[2])
    for name, array in value.items():
      getattr(module, name).value = jnp.asarray(array, jnp.float32)
  return model


# The continuous-thought loop (un-cached: one full forward per thought) ----------------------------
def batch(
  problems: Sequence[graphs.Problem],
  length: int,
  layout: str,
  orders: Sequence[tuple[int, int]] | None = None,
):
  """Right-padded question sequences with gold-hop thought slots: (tokens, root position, thoughts).
  ``orders``: the candidates of each prompt in order (default: target first)."""
  tokens = np.full((len(problems), length), data_lib.EOS, np.int32)
  root_pos, counts = np.zeros(len(problems), np.int32), np.zeros(len(problems), np.int32)
  for i, p in enumerate(problems):
    seq = data_lib.question_tokens(
      p, p.hops, layout=layout, candidates=None if orders is None else orders[i]
    )
    if len(seq) > length:
      raise ValueError(f"problem {i}: {len(seq)} tokens exceed {length}")
    tokens[i, : len(seq)] = seq
    counts[i] = p.hops
    root_pos[i] = len(seq) - p.hops - 2
  return tokens, root_pos, counts


@jax.jit
def _forward(graphdef, state, tokens, embeds, mask):
  model = nnx.merge(graphdef, state)
  out = model(tokens, embeds_BTD=embeds, embeds_mask_BT=mask)
  return out.final_hidden_BTD, out.logits_BTV


def run_thoughts(
  model: nn.Transformer,
  tokens: np.ndarray,
  root_pos: np.ndarray,
  counts: np.ndarray,
  return_logits: bool = False,
):
  """Feeds back the post-final-norm state of position t0+c−1 as the input at t0+c, c = 1..C per row,
  re-running the whole sequence each time; returns (thoughts (B, Cmax, D), predicted answer ids
  (B,)), and the answer logits over the 40 tokens (B, 40) with ``return_logits``."""
  graphdef, state = nnx.split(model)
  b, t = tokens.shape
  rows = np.arange(b)
  embeds = jnp.zeros((b, t, model.cfg.d_model), jnp.float32)
  mask = np.zeros((b, t), bool)
  thoughts = []
  for c in range(1, int(counts.max()) + 1):
    hidden, _ = _forward(graphdef, state, jnp.asarray(tokens), embeds, jnp.asarray(mask))
    thought = hidden[rows, root_pos + c - 1]
    thoughts.append(thought)
    live = counts >= c
    slot = np.where(live, root_pos + c, 0)
    embeds = embeds.at[rows, slot].set(jnp.where(live[:, None], thought, embeds[rows, slot]))
    mask[rows[live], slot[live]] = True
  _, logits = _forward(graphdef, state, jnp.asarray(tokens), embeds, jnp.asarray(mask))
  answer_logits = logits[rows, root_pos + counts + 1, :V]
  answers = np.asarray(jnp.argmax(answer_logits, -1))
  out = np.stack([np.asarray(x) for x in thoughts], 1), answers
  return out + (np.asarray(answer_logits),) if return_logits else out


def ideal_thought(problem: graphs.Problem, step: int, d_model: int) -> np.ndarray:
  out = np.zeros(d_model)
  reach = sorted(problem.reachable_within(step))
  out[reach] = 1 / math.sqrt(len(reach))
  return out


def evaluate(
  problems: Sequence[graphs.Problem],
  c: Construction = Construction(),
  model=None,
  batch_size: int = 128,
) -> dict:
  """Accuracy against the BFS answer, and thought c vs (1/√|V_c|) Σ_{V_c} u_v for every thought;
  ``counts``: the answer metrics and floors of :mod:`metrics` ({name: (k, n)}), candidates in a coin
  order per problem."""
  model = model or build(c)
  correct, max_dev, min_cos, n_thoughts = 0, 0.0, 1.0, 0
  per_step: dict[int, list[float]] = {}
  sums = dict.fromkeys(metrics_lib.MODEL_METRICS + metrics_lib.FLOORS, 0.0)
  length = min(
    c.max_seq_len,
    8 * (-(-max(len(data_lib.question_tokens(p, p.hops)) + 1 for p in problems) // 8)),
  )
  for start in range(0, len(problems), batch_size):
    chunk = problems[start : start + batch_size]
    orders = [metrics_lib.coin_order(p, start + i) for i, p in enumerate(chunk)]
    tokens, root_pos, counts = batch(chunk, length, c.layout, orders)
    thoughts, answers, logits = run_thoughts(model, tokens, root_pos, counts, return_logits=True)
    per_row = metrics_lib.answer_metrics(
      jnp.asarray(logits), jnp.asarray([p.target for p in chunk]), jnp.asarray(orders, jnp.int32)
    )
    for k, v in per_row.items():
      sums[k] += float(np.sum(v))
    for i, p in enumerate(chunk):
      for k, v in metrics_lib.floors(p, *orders[i]).items():
        sums[k] += v
      correct += int(answers[i] == p.answer())
      for step in range(1, p.hops + 1):
        got, want = thoughts[i, step - 1].astype(np.float64), ideal_thought(p, step, c.d_model)
        dev = float(np.max(np.abs(got - want)))
        cos = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
        max_dev, min_cos, n_thoughts = max(max_dev, dev), min(min_cos, cos), n_thoughts + 1
        per_step.setdefault(step, []).append(dev)
  n = len(problems)
  return {
    "count": n,
    "accuracy": correct / n,
    "thoughts": n_thoughts,
    "max_abs_deviation": max_dev,
    "min_cosine": min_cos,
    "max_abs_deviation_by_step": {k: max(v) for k, v in sorted(per_step.items())},
    "counts": {k: (int(round(v)), n) for k, v in sums.items()},
  }


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m projects.continuous_cot.construction",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--data", default=str(data_lib.DEFAULT_DATA), help="directory of the released ProsQA files"
  )
  parser.add_argument("--layout", default="both", choices=("code", "theory", "both"))
  parser.add_argument(
    "--limit", type=int, default=0, help="first N problems of each file (0 = all)"
  )
  args = parser.parse_args(argv)
  eta, xi = chooser_constants(Construction())
  print(
    f"construction: d_model={Construction().d_model}, η={eta:.3f}, ξ={xi:.2f}, "
    f"τ={Construction().tau}, "
    f"ε1={Construction().eps1:.4f}, ε2={Construction().eps2:.4f}"
  )
  status = 0
  tables: dict[str, dict] = {}
  for layout in ("code", "theory") if args.layout == "both" else (args.layout,):
    c = Construction(layout=layout)
    model = build(c)
    for name in data_lib.RELEASED:
      path = data_lib.released_path(name, args.data)
      if not path.exists():
        print(f"{path}: missing", file=sys.stderr)
        status = 1
        continue
      problems = data_lib.load(path)[: args.limit or None]
      r = evaluate(problems, c, model)
      steps = ", ".join(f"{k}: {v:.1e}" for k, v in r["max_abs_deviation_by_step"].items())
      print(
        f"[{layout}] {path.name}: accuracy {r['accuracy']:.4f} "
        f"({round(r['accuracy'] * r['count'])}/"
        f"{r['count']}); {r['thoughts']} thoughts, max |thought − ideal| "
        f"{r['max_abs_deviation']:.2e}, "
        f"min cosine {r['min_cosine']:.8f}; max deviation by step {{{steps}}}"
      )
      status |= int(r["accuracy"] < 1.0)
      tables[f"{layout}: {path.name}"] = r["counts"]
  if tables:
    print(
      "\nAnswer metrics (95% Wilson intervals; candidates in a coin order per problem):\n"
      + metrics_lib.table(tables)
    )
  return status


if __name__ == "__main__":
  sys.exit(main())
