"""What each method costs at inference: FLOPs per token (formula), parameter bytes held, and the
tokens/s ratio to one expert measured by bench.py in one run.

FLOPs follow superpose.train.flops (2 per multiply-add of every matmul the forward runs, causal
attention halved, embedding lookups, norms and element-wise work not counted) at the evaluation's
sequence length: one expert's forward is F1 = 2·N_matmul + 2·L·T·H·Dh per token.

  one model (an expert, an interpolation, task arithmetic, TIES, the learned merge)  F1
  oracle routing (knows each token's domain; holds every expert)                      F1
  sequence router (the base reads the prefix P; the chosen expert runs the sequence)  F1 · (1 + P/T)
  mixtures of the experts' distributions (uniform, fixed, posterior, fixed share)     E · F1
  the paper's superposition: E experts' blocks, one blended head, autoencoders (+ router)
  one trunk + deltas + gate: F1 + the rank-r paths + the gate (trunk.extra_flops_per_token)

Parameter bytes count every parameter a server must hold (f32 here): K experts for every method that
runs or routes between them, one model for a merge, the trunk plus deltas and gate for the one
trunk.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Mapping

import jax
from flax import nnx

from superpose.nn import Transformer, hf_gpt2
from superpose.nn.config import TransformerConfig
from superpose.train import checkpoint as ckpt_lib
from superpose.train import flops
from superpose.train.lm import model_config

ENSEMBLES = ("mixture uniform", "mixture best", "posterior mixture", "fixed share")
SINGLES = ("base", "interp best", "task arithmetic", "TIES")


def expert_flops(e: TransformerConfig, seq_len: int) -> float:
  """One forward of one expert, per token."""
  return 2.0 * flops.matmul_params(e) + 2.0 * e.num_layers * seq_len * e.num_heads * e.head_size


def param_count(module_factory) -> int:
  params = nnx.state(nnx.eval_shape(module_factory), nnx.Param)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


def superposed_flops(cfg, seq_len: int) -> float:
  """The paper's inference graph: every expert's blocks, ONE blended head, the autoencoders at
  ``ae_layers`` and, with a router, its MLP."""
  e = cfg.expert
  head = e.d_model * e.padded_vocab
  blocks = expert_flops(e, seq_len) - 2.0 * head
  b, kernel = cfg.bottleneck_size, (cfg.ae_kernel if cfg.ae_decoder == "conv" else 1)
  ae = len(cfg.ae_layers) * 2.0 * (e.d_model * b + b * e.d_model * kernel)
  router = 0.0
  if cfg.router:
    router = 2.0 * (
      2 * e.d_model * cfg.router_hidden
      + cfg.router_hidden * (e.num_layers - cfg.router_layer) * cfg.num_experts
    )
  return cfg.num_experts * blocks + 2.0 * head + ae + router


def learned_cost(task, seq_len: int) -> tuple[float, int]:
  """(FLOPs per token, parameters held) of a superpose.train run's inference model."""
  from projects.superposed_experts import trunk as trunk_lib

  e = task.model_cfg.expert
  single = param_count(lambda: Transformer(e, rngs=nnx.Rngs(0)))
  if task.method == "merge":
    return expert_flops(e, seq_len), single
  if task.method == "trunk":  # the teachers of a distilled run are training-only
    return (
      expert_flops(e, seq_len) + trunk_lib.extra_flops_per_token(task.trunk_cfg),
      single + trunk_lib.extra_params(task.trunk_cfg),
    )
  return superposed_flops(task.model_cfg, seq_len), param_count(task.make_model)


def method_costs(layout: Mapping, per_seed: Mapping, workdir: pathlib.Path) -> dict:
  """{method: {flops, flops_ratio, param_bytes, measured_ratio}} for every method of the
  evaluation."""
  from projects.superposed_experts import evaluate, train as sx_train

  names, seq_len = layout["domains"], int(layout["seq_len"])
  K = len(names)
  seed0 = next(iter(layout["seeds"]))
  runs = layout["seeds"][seed0]
  first = pathlib.Path(runs["experts"][0])
  e = (
    hf_gpt2.load_hf_gpt2(first)[0]
    if hf_gpt2.is_hf_dir(first)
    else model_config(ckpt_lib.run_config(first))
  )
  f1 = expert_flops(e, seq_len)
  n1 = param_count(lambda: Transformer(e, rngs=nnx.Rngs(0)))
  bench, tok_s = _bench(workdir)
  out = {}
  methods = next(iter(per_seed.values()))["scores"]
  for m in methods:
    if m in SINGLES or m.startswith("expert:"):
      f, n, key = f1, n1, "single"
    elif m == "oracle":
      f, n, key = f1, K * n1, "single"
    elif m == "router":
      f, n, key = f1 * (1 + evaluate.ROUTER_PREFIX / seq_len), K * n1, None
    elif m in ENSEMBLES:
      f, n, key = K * f1, K * n1, "ensemble"
    else:
      name = m.removesuffix(" (oracle gate)")
      task = sx_train.SuperposedSpec(ckpt_lib.run_config(runs["learned"][name]))
      f, n = learned_cost(task, seq_len)
      key = name
    out[m] = {
      "flops": f,
      "flops_ratio": f / f1,
      "param_bytes": 4 * n,
      "measured_ratio": bench.get(key) if key else None,
      "tok_s": tok_s.get(key) if key else None,
      "bench": key,
    }
  return out


def _bench(workdir: pathlib.Path) -> tuple[dict, dict]:
  """From bench.json, per learned run name | 'single' | 'ensemble': one expert's measured tokens/s ÷
  that method's (its time per token in units of one expert's), and the method's tokens/s."""
  path = pathlib.Path(workdir) / "bench.json"
  if not path.exists():
    return {}, {}
  data = json.loads(path.read_text("utf-8"))
  return (
    {k: v["cost_ratio"] for k, v in data["methods"].items()},
    {k: v["tok_s"] for k, v in data["methods"].items()},
  )
