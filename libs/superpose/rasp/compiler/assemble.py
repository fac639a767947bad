"""Blocks + layout → a ``superpose.nn.TransformerConfig`` and its parameters (p2 §2.3).

The model is tracr's: no norms, ReLU MLPs, no biases (the ``one`` direction carries them), learned
positions with row 0 (BOS) all zero and row p ≥ 1 = ``indices:(p−1)``, untied unembedding that reads
the output S-Op's directions, attention scale 1 (the coldness is in W_Q), heads padded to the most
heads of any layer and MLPs to the widest, with zeros. Token id i embeds as ``tokens:<token i>``
plus ``one``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from superpose.nn.config import TransformerConfig
from superpose.rasp.compiler.bases import AttentionHead, Dir, MLPBlock
from superpose.rasp.compiler.blocks import ONE_DIR


def _factor(pairs: list[tuple[Dir, Dir, float]]):
  """W (left × right) as L @ R.T with the smaller side the identity: (left dirs, right dirs, L,
  R)."""
  left = list(dict.fromkeys(a for a, _, _ in pairs))
  right = list(dict.fromkeys(b for _, b, _ in pairs))
  li, ri = {d: i for i, d in enumerate(left)}, {d: i for i, d in enumerate(right)}
  rank = min(len(left), len(right))
  lw, rw = np.zeros((len(left), rank)), np.zeros((len(right), rank))
  if len(right) <= len(left):
    rw[np.arange(rank), np.arange(rank)] = 1.0
    for a, b, w in pairs:
      lw[li[a], ri[b]] += w
  else:
    lw[np.arange(rank), np.arange(rank)] = 1.0
    for a, b, w in pairs:
      rw[ri[b], li[a]] += w
  return left, right, lw, rw


def head_size(head: AttentionHead) -> int:
  return max(_factor(head.qk)[2].shape[1], _factor(head.ov)[2].shape[1], 1)


def assemble(
  residual: Sequence[Dir],
  token_dirs: Sequence[Dir],
  index_dirs: Sequence[Dir],
  output_dirs: Sequence[Dir],
  layers: list[dict[str, list]],
  *,
  max_seq_len: int,
  causal: bool,
) -> tuple[TransformerConfig, dict]:
  """``layers[l]`` = {'attention': [AttentionHead...], 'mlp': [MLPBlock...]}. Returns (config,
  params)."""
  index = {d: i for i, d in enumerate(residual)}
  if len(index) != len(residual):
    raise ValueError("assemble: the residual basis has a repeated direction")
  dim = len(residual)
  vocab = max(len(token_dirs), len(output_dirs), 1)
  mlps = [
    MLPBlock.parallel("+".join(b.node for b in layer["mlp"]), layer["mlp"]) for layer in layers
  ]
  num_heads = max([len(layer["attention"]) for layer in layers] + [1])
  head_dim = max([head_size(h) for layer in layers for h in layer["attention"]] + [1])
  d_ff = max([m.hidden for m in mlps] + [1])
  cfg = TransformerConfig(
    vocab_size=vocab,
    vocab_multiple=1,
    d_model=dim,
    num_layers=len(layers),
    num_heads=num_heads,
    head_dim=head_dim,
    d_ff=d_ff,
    max_seq_len=max_seq_len + 1,
    norm="none",
    attn_norm="none",
    mlp_norm="none",
    final_norm=False,
    activation="relu",
    mlp_residual=True,
    causal=causal,
    attn_scale="one",
    positions="learned",
    tie_embeddings=False,
    use_bias=False,
    init_std=0.0,
  )

  token = np.zeros((vocab, dim), np.float32)
  for i, d in enumerate(token_dirs):
    token[i, index[d]] = 1.0
    if ONE_DIR in index:
      token[i, index[ONE_DIR]] = 1.0
  position = np.zeros((max_seq_len + 1, dim), np.float32)
  for p, d in enumerate(index_dirs, start=1):
    position[p, index[d]] = 1.0
  unembed = np.zeros((dim, vocab), np.float32)
  for j, d in enumerate(output_dirs):
    unembed[index[d], j] = 1.0

  blocks = {}
  for l, layer in enumerate(layers):
    q, k, v = (np.zeros((dim, num_heads, head_dim), np.float32) for _ in range(3))
    o = np.zeros((num_heads, head_dim, dim), np.float32)
    for h, head in enumerate(layer["attention"]):
      qd, kd, lw, rw = _factor(head.qk)
      for a, d in enumerate(qd):
        q[index[d], h, : lw.shape[1]] += lw[a]
      for b, d in enumerate(kd):
        k[index[d], h, : rw.shape[1]] += rw[b]
      vd, od, lw, rw = _factor(head.ov)
      for a, d in enumerate(vd):
        v[index[d], h, : lw.shape[1]] += lw[a]
      for b, d in enumerate(od):
        o[h, : rw.shape[1], index[d]] += rw[b]
    wi = np.zeros((dim, d_ff), np.float32)
    wo = np.zeros((d_ff, dim), np.float32)
    for d, unit, w in mlps[l].w_in:
      wi[index[d], unit] += w
    for unit, d, w in mlps[l].w_out:
      wo[unit, index[d]] += w
    blocks[l] = {"attn": {"q": q, "k": k, "v": v, "o": o}, "mlp": {"wi": wi, "wo": wo}}
  params = {
    "blocks": blocks,
    "position_embedding": position,
    "token_embedding": token,
    "unembedding": unembed,
  }
  return cfg, params
