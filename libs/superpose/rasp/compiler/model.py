"""A compiled RASP program: a ``superpose.nn.Transformer`` config + params, its labelled residual
basis, and the encode / decode around the forward pass.

    compiled = compile_rasp(lib.make_sort_unique(tokens, tokens), {1, 2, 3}, 5)
    compiled.apply([3, 1, 2])                 # [1, 2, 3]      (no BOS in, none out)
    ids, segments = compiled.encode([[3, 1, 2], [2, 1]])  # BOS prepended, right-padded with PAD
    out = compiled.forward(ids, segments)     # superpose.nn.Output (logits read the output S-Op)
    compiled.decode(out.logits_BTV, segments) # [[1, 2, 3], [1, 2]]
    compiled.save(DIR); CompiledModel.load(DIR)  # checkpoint + config.json + residual_basis.json

Outputs are not logits in the learned-model sense: for a categorical output, column j of the
unembedding reads direction ``output_label:output_values[j]`` (≈1 where that value is computed,
all ≈0 for None); for a numerical one, column 0 reads the output's residual direction.
Pad positions are kept out of attention through segment ids (0 = pad), so unlike tracr a padded
batch needs no special care.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose.nn.config import TransformerConfig, from_dict
from superpose.nn.decoder import Output, Transformer
from superpose.rasp import validate

NONE_THRESHOLD = 0.5  # a categorical output whose best column is below this decodes to None


@functools.lru_cache(maxsize=256)
def graphdef_for(cfg: TransformerConfig):
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[0]


@functools.partial(jax.jit, static_argnames=("cfg", "return_hidden"))
def _forward(params, ids_BT, segments_BT, *, cfg: TransformerConfig, return_hidden: bool) -> Output:
  model = nnx.merge(graphdef_for(cfg), params)
  return model(ids_BT, segment_ids_BT=segments_BT, return_hidden=return_hidden)


def str_keys(tree):
  return {str(k): str_keys(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


@dataclasses.dataclass
class CompiledModel:
  config: TransformerConfig
  params: dict  # nested dict of numpy arrays, as nnx.to_pure_dict (str keys)
  residual_labels: list[str]  # one label per residual dimension ("name:value" or "name")
  tokens: list  # input token of each id: [BOS, PAD, *sorted vocab]
  bos: Any
  pad: Any
  max_seq_len: int
  causal: bool
  output_label: str
  output_encoding: str  # "categorical" | "numerical"
  output_values: list  # categorical: the value of each unembedding column
  layer_allocation: list[dict]  # per layer: {"attention": [labels], "mlp": [labels]}
  program: Any = None  # the RASP program (None after ``load``)
  compile_seconds: float = 0.0

  def __post_init__(self):
    self.params = str_keys(self.params)
    self._ids = {t: i for i, t in enumerate(self.tokens)}

  # Encoding / decoding ---------------------------------------------------------------------------
  def encode(self, batch, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences (BOS optional) → (ids (B, T) with BOS first and PAD after the end, segment
    ids (B, T): 1 on BOS and tokens, 0 on pads). ``T`` = ``length`` or the longest input + 1."""
    seqs = [self._with_bos(list(xs)) for xs in batch]
    width = length or max(len(s) for s in seqs)
    if width > self.max_seq_len + 1 or any(len(s) > width for s in seqs):
      raise ValueError(
        f"inputs of up to {self.max_seq_len} tokens (+ BOS) fit this model; got "
        f"{max(len(s) for s in seqs) - 1} tokens for a width of {width}"
      )
    ids = np.full((len(seqs), width), self._ids[self.pad], np.int32)
    segments = np.zeros((len(seqs), width), np.int32)
    for b, s in enumerate(seqs):
      for t, tok in enumerate(s):
        if tok not in self._ids or (t > 0 and tok in (self.bos, self.pad)):
          raise ValueError(
            f"input token {tok!r} (position {t - 1}) is not in the vocab {self.tokens[2:]}"
          )
        ids[b, t] = self._ids[tok]
      segments[b, : len(s)] = 1
    return ids, segments

  def _with_bos(self, xs: list) -> list:
    return xs if xs and xs[0] == self.bos and type(xs[0]) is type(self.bos) else [self.bos] + xs

  def decode(self, logits_BTV, segments_BT) -> list[list]:
    """Outputs per row for its real tokens (BOS and pads dropped)."""
    logits = np.asarray(logits_BTV, np.float64)
    lengths = np.asarray(segments_BT).sum(-1) - 1
    out = []
    for b, n in enumerate(lengths):
      row = logits[b, 1 : n + 1]
      if self.output_encoding == "numerical":
        out.append([float(v) for v in row[:, 0]])
      else:
        scores = row[:, : len(self.output_values)]
        best = scores.argmax(-1) if scores.shape[1] else np.zeros(len(row), int)
        out.append(
          [
            self.output_values[j] if scores.shape[1] and scores[t, j] > NONE_THRESHOLD else None
            for t, j in enumerate(best)
          ]
        )
    return out

  # Running ---------------------------------------------------------------------------------------
  @functools.cached_property
  def device_params(self):
    return jax.tree.map(jnp.asarray, self.params)

  def forward(
    self, ids_BT, segments_BT=None, *, return_hidden: bool = False, params=None
  ) -> Output:
    """The usual ``superpose.nn.Transformer`` forward pass (jitted once per config), f32 matmuls."""
    ids_BT = jnp.asarray(ids_BT, jnp.int32)
    segments_BT = (
      jnp.ones_like(ids_BT) if segments_BT is None else jnp.asarray(segments_BT, jnp.int32)
    )
    with jax.default_matmul_precision("float32"):
      return _forward(
        self.device_params if params is None else params,
        ids_BT,
        segments_BT,
        cfg=self.config,
        return_hidden=return_hidden,
      )

  def apply_batch(self, batch, *, check: bool = True, length: int | None = None) -> list[list]:
    """Decoded outputs for a batch of inputs (without BOS), one forward pass.

    ``check`` (as in ``apply``) runs the evaluator on every input first; pass ``check=False`` to
    skip it where the inputs are known to be fine (e.g. when comparing against the evaluator
    anyway).
    """
    batch = [list(xs) for xs in batch]
    if check:
      for xs in batch:
        self.check_input(xs)
    ids, segments = self.encode(batch, length)
    return self.decode(self.forward(ids, segments).logits_BTV, segments)

  def apply(self, xs, *, check: bool = True) -> list:
    """The compiled model's output for one input (BOS optional), without BOS.

    ``check`` refuses inputs on which the compiled model would silently differ from RASP (a
    categorical Aggregate selecting several distinct values, a numerical one averaging non-binary
    values, a numerical S-Op that is None somewhere), with ``UnsupportedProgramError``, and passes
    on the evaluator's own errors (e.g. a ``Comparison`` given None), which name the expression.
    """
    return self.apply_batch([xs], check=check)[0]

  __call__ = apply

  def check_input(self, xs) -> None:
    if self.program is None:
      return
    xs = list(xs)
    xs = xs[1:] if xs and xs[0] == self.bos and type(xs[0]) is type(self.bos) else xs
    issues = validate.dynamic_issues(self.program, xs, causal=self.causal)
    if issues:
      raise validate.UnsupportedProgramError(issues)

  def residual(self, xs) -> tuple[np.ndarray, list[str]]:
    """The residual stream for one input: (L+1, T, D) with [0] = embeddings, and the labels of D."""
    ids, segments = self.encode([list(xs)])
    hidden = self.forward(ids, segments, return_hidden=True).hidden
    return np.asarray(hidden[:, 0]), list(self.residual_labels)

  def model(self) -> Transformer:
    """A ``superpose.nn.Transformer`` holding the compiled weights."""
    return nnx.merge(graphdef_for(self.config), self.device_params)

  # Description -----------------------------------------------------------------------------------
  @property
  def num_layers(self) -> int:
    return self.config.num_layers

  @property
  def d_model(self) -> int:
    return self.config.d_model

  def num_params(self) -> tuple[int, int]:
    leaves = jax.tree.leaves(self.params)
    return sum(a.size for a in leaves), sum(int(np.count_nonzero(a)) for a in leaves)

  def explain(self) -> str:
    cfg = self.config
    total, nonzero = self.num_params()
    lines = [
      f"layers {cfg.num_layers}  heads {cfg.num_heads}  head_dim {cfg.head_dim}  d_ff {cfg.d_ff}  "
      f"d_model {cfg.d_model}  params {total} ({nonzero} non-zero)  causal {self.causal}",
      f"output: {self.output_label} ({self.output_encoding})",
      "layer allocation:",
    ]
    for i, layer in enumerate(self.layer_allocation):
      lines.append(
        f"  layer {i}: attention [{', '.join(layer['attention']) or 'no-op'}]   "
        f"mlp [{', '.join(layer['mlp']) or 'no-op'}]"
      )
    lines.append("residual basis:")
    lines += [f"  {i:4d}  {label}" for i, label in enumerate(self.residual_labels)]
    return "\n".join(lines)

  # Persistence -----------------------------------------------------------------------------------
  def metadata(self) -> dict:
    return {
      "tokens": [encode_value(t) for t in self.tokens],
      "bos": encode_value(self.bos),
      "pad": encode_value(self.pad),
      "max_seq_len": self.max_seq_len,
      "causal": self.causal,
      "output_label": self.output_label,
      "output_encoding": self.output_encoding,
      "output_values": [encode_value(v) for v in self.output_values],
      "layer_allocation": self.layer_allocation,
      "residual_labels": self.residual_labels,
    }

  def save(self, directory) -> pathlib.Path:
    """``directory/config.json`` ({"model": config, "compiled": metadata}), ``residual_basis.json``
    and ``checkpoints/0/params`` (the repo's checkpoint module; ``load_params`` reads it)."""
    import shutil
    from superpose.train import checkpoint

    directory = pathlib.Path(directory)
    ckpt_dir = checkpoint.checkpoint_dir(directory)
    if ckpt_dir.exists():  # a previous compile is replaced; anything else is refused
      previous = (
        json.loads((directory / "config.json").read_text())
        if (directory / "config.json").exists()
        else {}
      )
      if "compiled" not in previous:
        raise FileExistsError(
          f"{directory} holds checkpoints that are not a compiled RASP model; use another directory"
        )
      shutil.rmtree(ckpt_dir)
    directory.mkdir(parents=True, exist_ok=True)
    meta = self.metadata()
    (directory / "config.json").write_text(
      json.dumps({"model": self.config.to_dict(), "compiled": meta}, indent=1)
    )
    (directory / "residual_basis.json").write_text(
      json.dumps(
        {"labels": self.residual_labels, "output_columns": self.output_columns()}, indent=1
      )
    )
    with checkpoint.Checkpointer(checkpoint.checkpoint_dir(directory), async_save=False) as ckpt:
      ckpt.save(0, {"params": self.device_params}, meta={"kind": "compiled_rasp"})
    return directory

  def output_columns(self) -> list[str]:
    if self.output_encoding == "numerical":
      return [self.output_label]
    return [
      f"{self.output_label}:{v if isinstance(v, str) else repr(v)}" for v in self.output_values
    ]

  @classmethod
  def load(cls, directory, mesh=None) -> "CompiledModel":
    """Reads what ``save`` wrote; params land on ``mesh`` (default: one device) with the repo's
    rules."""
    from superpose.train import checkpoint, mesh as mesh_lib, state

    directory = pathlib.Path(directory)
    saved = json.loads((directory / "config.json").read_text())
    cfg = from_dict(saved["model"])
    mesh = mesh or mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    _, abs_params, _ = state.split_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
    params = checkpoint.load_params(directory, abs_params)
    m = saved["compiled"]
    out = cls(
      config=cfg,
      params=jax.tree.map(np.asarray, params),
      residual_labels=m["residual_labels"],
      tokens=[decode_value(t) for t in m["tokens"]],
      bos=decode_value(m["bos"]),
      pad=decode_value(m["pad"]),
      max_seq_len=m["max_seq_len"],
      causal=m["causal"],
      output_label=m["output_label"],
      output_encoding=m["output_encoding"],
      output_values=[decode_value(v) for v in m["output_values"]],
      layer_allocation=m["layer_allocation"],
    )
    out.__dict__["device_params"] = params
    return out


def encode_value(v):
  """JSON for a token/output value; tuples become {"tuple": [...]} so they round-trip."""
  if isinstance(v, tuple):
    return {"tuple": [encode_value(x) for x in v]}
  if v is None or isinstance(v, (str, int, float, bool)):
    return v
  raise TypeError(f"cannot save the value {v!r} ({type(v).__name__}) in config.json")


def decode_value(v):
  if isinstance(v, dict):
    return tuple(decode_value(x) for x in v["tuple"])
  return v
