"""TransformerConfig: every architecture knob of the one decoder, plus the gpt2 / llama presets.

The config is a frozen dataclass so that it can be a static `jax.jit` argument and a dict key.
Values are validated when the config is built; every bad value gives one line of the error.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax.numpy as jnp

NORMS = ("layernorm", "rmsnorm", "l2", "none")
NORM_PLACEMENTS = ("pre", "post", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu", "step")
POSITIONS = ("learned", "rope", "sinusoidal", "none")
ATTENTIONS = ("xla", "cudnn", "splash")
REMATS = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Decoder-only transformer.

  Block layout per sub-layer (attention, then MLP), chosen by ``attn_norm`` / ``mlp_norm``:
    'pre':  x = x + f(norm(x))        (GPT-2, Llama)
    'post': x = norm(x + f(x))        (original Transformer; ``mlp_residual=False``: norm(f(x)))
    'none': x = x + f(x)              (no norm on that sub-layer)
  ``mlp_residual=False`` drops the ``x +`` around the MLP (Reasoning-by-Superposition construction:
  ``attn_norm='none', mlp_norm='post', norm='l2'``). ``norm='none'`` removes every norm (Tracr).
  ``causal=False`` gives bidirectional attention (Tracr's non-causal programs).
  """

  vocab_size: int = 256
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int | None = None  # None: num_heads. Fewer: grouped-query attention.
  head_dim: int | None = None  # None: d_model // num_heads. Resolved: `head_size`.
  d_ff: int = 512
  max_seq_len: int = 256
  # Normalisation.
  norm: str = "layernorm"
  norm_eps: float = 1e-5
  attn_norm: str = "pre"
  mlp_norm: str = "pre"
  final_norm: bool = True
  # MLP.
  activation: str = "gelu_tanh"
  step_threshold: float = 0.0  # activation='step': 1 where x > step_threshold, else 0.
  mlp_residual: bool = True
  # Attention.
  causal: bool = True
  attn_scale: str | float = "default"  # 'default' = 1/sqrt(head_size), 'one' = 1, or a float.
  attention: str = "xla"  # 'xla' | 'cudnn' | 'splash'
  causal_block: int = 64  # xla, causal, no cache: query blocks skip the keys after them (0: off)
  # Positions and embeddings.
  positions: str = "learned"
  rope_theta: float = 10_000.0
  position_dims: int = 0  # sinusoidal only: the table fills the last position_dims dims (0 = all)
  tie_embeddings: bool = True
  use_bias: bool = True
  vocab_multiple: int = 128
  # Compute.
  scan_layers: bool = False
  remat: str = "none"
  param_dtype: str = "float32"
  dtype: str = "float32"
  init_std: float = 0.02

  def __post_init__(self):
    errors = []

    def check(ok: bool, message: str):
      if not ok:
        errors.append(message)

    for name in (
      "vocab_size",
      "d_model",
      "num_layers",
      "num_heads",
      "d_ff",
      "max_seq_len",
      "vocab_multiple",
    ):
      value = getattr(self, name)
      check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"model.{name}={value!r}: must be a positive integer",
      )
    for name, allowed in (
      ("norm", NORMS),
      ("attn_norm", NORM_PLACEMENTS),
      ("mlp_norm", NORM_PLACEMENTS),
      ("activation", ACTIVATIONS),
      ("positions", POSITIONS),
      ("attention", ATTENTIONS),
      ("remat", REMATS),
      ("param_dtype", DTYPES),
      ("dtype", DTYPES),
    ):
      value = getattr(self, name)
      check(value in allowed, f"model.{name}={value!r}: must be one of {', '.join(allowed)}")
    check(self.norm_eps > 0, f"model.norm_eps={self.norm_eps!r}: must be positive")
    check(self.init_std >= 0, f"model.init_std={self.init_std!r}: must be non-negative")
    check(self.rope_theta > 0, f"model.rope_theta={self.rope_theta!r}: must be positive")
    check(
      isinstance(self.causal_block, int)
      and not isinstance(self.causal_block, bool)
      and self.causal_block >= 0,
      f"model.causal_block={self.causal_block!r}: must be a non-negative integer (0 = off)",
    )
    scale = self.attn_scale
    check(
      scale in ("default", "one")
      or (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)),
      f"model.attn_scale={scale!r}: must be 'default', 'one' or a finite number",
    )
    if self.num_kv_heads is not None:
      check(
        isinstance(self.num_kv_heads, int)
        and self.num_kv_heads > 0
        and isinstance(self.num_heads, int)
        and self.num_heads % self.num_kv_heads == 0,
        f"model.num_kv_heads={self.num_kv_heads!r}: must be a positive divisor of "
        f"num_heads={self.num_heads}",
      )
    if self.head_dim is None:
      check(
        isinstance(self.num_heads, int)
        and self.num_heads > 0
        and self.d_model % self.num_heads == 0,
        f"model.head_dim=None: d_model={self.d_model} is not divisible by "
        f"num_heads={self.num_heads}; "
        "set head_dim explicitly",
      )
    else:
      check(
        isinstance(self.head_dim, int) and self.head_dim > 0,
        f"model.head_dim={self.head_dim!r}: must be a positive integer or None",
      )
    head_size_known = isinstance(self.head_dim, int) or (
      isinstance(self.num_heads, int) and self.num_heads > 0 and self.d_model % self.num_heads == 0
    )
    if self.positions == "rope" and head_size_known:
      check(
        self.head_size % 2 == 0,
        f"model.head_dim={self.head_size}: rope needs an even head dimension",
      )
    if self.positions == "sinusoidal":
      dims = self.position_dims or self.d_model
      check(
        isinstance(dims, int) and 0 < dims <= self.d_model and dims % 2 == 0,
        f"model.position_dims={self.position_dims!r}: sinusoidal positions need an even number of "
        f"dimensions, at most d_model={self.d_model} (0 = all)",
      )
    elif self.position_dims:
      check(
        False,
        f"model.position_dims={self.position_dims!r}: only sinusoidal positions take position_dims",
      )
    if errors:
      raise ValueError("invalid model config:\n  " + "\n  ".join(errors))

  # Resolved values -------------------------------------------------------------------------------
  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def head_size(self) -> int:
    """The per-head dimension (``head_dim`` resolved)."""
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def padded_vocab(self) -> int:
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  @property
  def scale(self) -> float:
    """The attention logit scale."""
    if self.attn_scale == "default":
      return 1.0 / math.sqrt(self.head_size)
    if self.attn_scale == "one":
      return 1.0
    return float(self.attn_scale)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> "TransformerConfig":
    _check_keys(changes)
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(TransformerConfig))


def _check_keys(keys):
  for key in keys:
    if key not in FIELDS:
      raise ValueError(f"model: unknown key {key!r} (known: {', '.join(FIELDS)})")


def gpt2(**overrides) -> TransformerConfig:
  """GPT-2 (small by default): pre-LayerNorm, learned positions, gelu_tanh, biases, tied, d_ff =
  4·d."""
  _check_keys(overrides)
  values = dict(
    vocab_size=50257,
    d_model=768,
    num_layers=12,
    num_heads=12,
    max_seq_len=1024,
    norm="layernorm",
    norm_eps=1e-5,
    attn_norm="pre",
    mlp_norm="pre",
    final_norm=True,
    activation="gelu_tanh",
    positions="learned",
    tie_embeddings=True,
    use_bias=True,
  )
  values.update(overrides)
  values.setdefault("d_ff", 4 * values["d_model"])
  return TransformerConfig(**values)


def llama(**overrides) -> TransformerConfig:
  """Llama family: pre-RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases, untied."""
  _check_keys(overrides)
  values = dict(
    vocab_size=32000,
    d_model=768,
    num_layers=12,
    num_heads=12,
    num_kv_heads=4,
    max_seq_len=2048,
    norm="rmsnorm",
    norm_eps=1e-5,
    attn_norm="pre",
    mlp_norm="pre",
    final_norm=True,
    activation="swiglu",
    positions="rope",
    rope_theta=10_000.0,
    tie_embeddings=False,
    use_bias=False,
  )
  values.update(overrides)
  if "d_ff" not in values:  # Llama's rule: 2/3 of 4·d, rounded up to a multiple of 64.
    values["d_ff"] = -(-int(8 * values["d_model"] / 3) // 64) * 64
  return TransformerConfig(**values)


def base(**overrides) -> TransformerConfig:
  """The dataclass defaults, for configs that spell every choice out."""
  _check_keys(overrides)
  return TransformerConfig(**overrides)


PRESETS: dict[str, Callable[..., TransformerConfig]] = {"base": base, "gpt2": gpt2, "llama": llama}


def from_dict(values: Mapping[str, Any] | Any) -> TransformerConfig:
  """Config from a plain dict or ml_collections.ConfigDict: optional ``preset`` key plus
  overrides."""
  if hasattr(values, "to_dict"):
    values = values.to_dict()
  values = dict(values)
  preset = values.pop("preset", None) or "base"
  if preset not in PRESETS:
    raise ValueError(f"model: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
  for key in values:
    if key not in FIELDS:
      raise ValueError(f"model: unknown key {key!r} (known: preset, {', '.join(FIELDS)})")
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  scale = values.get("attn_scale")
  if isinstance(scale, str) and scale not in ("default", "one"):
    try:  # a number given as text (command-line overrides of a string field)
      values["attn_scale"] = float(scale)
    except ValueError:
      pass  # __post_init__ reports it
  return PRESETS[preset](**values)


# One line per field (``python -m launch.train --config X --print_config`` shows them beside the
# values).
FIELD_DOCS = {
  "vocab_size": "tokens of the tokenizer (the embedding is padded up to vocab_multiple)",
  "d_model": "residual width",
  "num_layers": "transformer blocks",
  "num_heads": "attention (query) heads",
  "num_kv_heads": "key/value heads; None = num_heads, fewer = grouped-query attention",
  "head_dim": "per-head width; None = d_model // num_heads",
  "d_ff": "MLP hidden width",
  "max_seq_len": "longest sequence (the learned position table's size)",
  "norm": "normalisation: " + " | ".join(NORMS),
  "norm_eps": "epsilon of the norms",
  "attn_norm": "norm placement around attention: " + " | ".join(NORM_PLACEMENTS),
  "mlp_norm": "norm placement around the MLP: " + " | ".join(NORM_PLACEMENTS),
  "final_norm": "a norm before the unembedding",
  "activation": "MLP activation: " + " | ".join(ACTIVATIONS),
  "step_threshold": "activation='step': 1 where x > step_threshold",
  "mlp_residual": "False drops the residual around the MLP (the RbS construction)",
  "causal": "causal attention mask (False: bidirectional)",
  "attn_scale": "'default' = 1/sqrt(head size), 'one' = 1, or a number",
  "attention": "attention implementation: " + " | ".join(ATTENTIONS),
  "causal_block": "attention='xla' with causal=True and no cache: queries in blocks of this many "
  "rows, each block scoring only the keys up to its last row (same math, skips most of the "
  "masked half of the score work); 0 = one block",
  "positions": "position encoding: " + " | ".join(POSITIONS),
  "rope_theta": "RoPE base",
  "position_dims": "sinusoidal only: the table fills the last position_dims dims (0 = all)",
  "tie_embeddings": "unembedding = embeddingᵀ",
  "use_bias": "biases on the projections and norms",
  "vocab_multiple": "pad the vocabulary to a multiple of this",
  "scan_layers": "jax.lax.scan over stacked blocks (one compile for all layers)",
  "remat": "rematerialisation of the blocks: " + " | ".join(REMATS),
  "param_dtype": "parameter dtype",
  "dtype": "compute dtype",
  "init_std": "std of the normal initialisers",
}
