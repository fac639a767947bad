"""Hugging Face GPT-2 interop: read and write checkpoints in the ``transformers`` GPT-2 layout.

    cfg, params = load_hf_gpt2("path/to/gpt2")  # config.json + model.safetensors (or .bin)
    model = to_model(cfg, params)               # a superpose Transformer (the `gpt2` preset)
    save_hf_gpt2(cfg, params, "out/")           # GPT2LMHeadModel.from_pretrained("out/") loads it

``params`` is the string-keyed pure dict of the train state (``params['blocks']['0']['attn']['q']``,
or stacked ``params['blocks']['attn']['q']`` with ``scan_layers``). The layout differences handled
here:

* HF's ``Conv1D`` stores weights as (in, out), the orientation of our kernels, so nothing is
  transposed except ``lm_head.weight`` (an ``nn.Linear``, (out, in)).
* ``attn.c_attn`` fuses q | k | v along its output, each head-major (H·A); ``attn.c_proj`` reads
  the heads merged the same way. We keep heads as their own axis: q/k/v (D, H, A), biases (H, A),
  o (H, A, D).
* Our vocabulary is padded to ``vocab_multiple``: imported embeddings get zero rows, exported ones
  lose them.
* Keys may carry the ``transformer.`` prefix (GPT2LMHeadModel) or not (GPT2Model); HF's causal-mask
  buffers (``attn.bias``, ``attn.masked_bias``) that old checkpoints hold are not parameters and are
  skipped.

Safetensors files are read and written by a small numpy codec here, so neither torch nor the
``safetensors`` package is needed; ``pytorch_model.bin`` needs torch.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from superpose.nn.config import TransformerConfig, gpt2
from superpose.nn.decoder import Transformer, stack_layers, unstack_layers

SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"

# HF activation name → ours. gelu_new and gelu_pytorch_tanh are both the tanh approximation.
_ACTIVATIONS_FROM_HF = {
  "gelu_new": "gelu_tanh",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu": "gelu",
  "relu": "relu",
}
_ACTIVATIONS_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


# --- safetensors ----------------------------------------------------------------------------------

_DTYPES = {
  "F64": np.dtype("<f8"),
  "F32": np.dtype("<f4"),
  "F16": np.dtype("<f2"),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I64": np.dtype("<i8"),
  "I32": np.dtype("<i4"),
  "I16": np.dtype("<i2"),
  "I8": np.dtype("i1"),
  "U8": np.dtype("u1"),
  "BOOL": np.dtype("bool"),
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a ``.safetensors`` file: u64-LE header length, JSON header, then the raw
  bytes."""
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
  header.pop("__metadata__", None)
  # Map the data rather than read it, so that a large checkpoint is held once (as the copies below).
  data = np.memmap(path, np.uint8, "r", offset=8 + header_len) if header else np.zeros(0, np.uint8)
  tensors = {}
  for name, info in header.items():
    if info["dtype"] not in _DTYPES:
      raise ValueError(
        f"{path}: tensor {name!r} has dtype {info['dtype']}, which this reader does not "
        f"support ({', '.join(_DTYPES)})"
      )
    start, end = info["data_offsets"]
    # Copy out of the map: a view would be read-only and keep the file open.
    tensors[name] = np.array(data[start:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"]))
  del data
  return tensors


def write_safetensors(
  path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
  """Write a ``.safetensors`` file (readable by the ``safetensors`` package and
  ``transformers``)."""
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  chunks, offset = [], 0
  for name in sorted(tensors):
    array = np.asarray(tensors[name])
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _DTYPE_NAMES:
      raise ValueError(
        f"write_safetensors: tensor {name!r} has dtype {array.dtype}, which safetensors "
        f"cannot hold here ({', '.join(_DTYPES)})"
      )
    raw = np.ascontiguousarray(array, dtype).tobytes()
    header[name] = {
      "dtype": _DTYPE_NAMES[dtype],
      "shape": list(array.shape),
      "data_offsets": [offset, offset + len(raw)],
    }
    chunks.append(raw)
    offset += len(raw)
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (
    -len(encoded) % 8
  )  # the reference writer pads the header to 8 bytes with spaces
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for raw in chunks:
      f.write(raw)


def _read_pytorch(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(
      f"reading {path} (a PyTorch checkpoint) needs torch: `pip install torch` "
      "(or convert it to model.safetensors, which needs nothing)"
    ) from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  out = {}
  for name, tensor in state.items():
    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits as ml_dtypes'
      out[name] = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    else:
      out[name] = tensor.numpy().copy()
  return out


def _write_pytorch(path: pathlib.Path, tensors: dict[str, np.ndarray]) -> None:
  try:
    import torch
  except ImportError as e:
    raise ImportError(
      "save_hf_gpt2(format='pytorch') needs torch: `pip install torch` "
      "(format='safetensors' needs nothing)"
    ) from e
  state = {}
  for name, array in tensors.items():
    if array.dtype == ml_dtypes.bfloat16:
      state[name] = torch.from_numpy(np.array(array).view(np.int16)).view(torch.bfloat16)
    else:
      state[name] = torch.from_numpy(
        np.array(array)
      )  # a writable copy: jax-backed arrays are read-only
  torch.save(state, path)


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Tensors of a ``.safetensors`` or PyTorch file, or of a sharded checkpoint's
  ``*.index.json``."""
  path = pathlib.Path(path)
  if path.name.endswith(".index.json"):
    files = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    tensors = {}
    for name in files:
      tensors.update(read_tensors(path.parent / name))
    return tensors
  if path.suffix == ".safetensors":
    return read_safetensors(path)
  return _read_pytorch(path)


# --- config ---------------------------------------------------------------------------------------


def config_from_hf(hf_config: dict, **overrides) -> TransformerConfig:
  """The `gpt2` preset config of an HF ``GPT2Config`` dict (``config.json``).

  ``overrides`` set choices that HF does not fix (``scan_layers``, ``param_dtype``, ``attention``,
  ...). Options our decoder does not implement raise ``ValueError`` rather than load a different
  model.
  """
  c = hf_config
  errors = []
  if c.get("model_type", "gpt2") != "gpt2":
    errors.append(f"model_type={c['model_type']!r}: only 'gpt2' checkpoints are supported")
  activation = c.get("activation_function", "gelu_new")
  if activation not in _ACTIVATIONS_FROM_HF:
    errors.append(
      f"activation_function={activation!r}: supported are {', '.join(_ACTIVATIONS_FROM_HF)}"
    )
  # Each of these changes the computation in a way the `gpt2` preset cannot express.
  for key, why in (
    ("scale_attn_by_inverse_layer_idx", "scales layer i's attention logits by 1/(i+1)"),
    ("reorder_and_upcast_attn", "is a different attention kernel, not implemented here"),
    ("add_cross_attention", "adds encoder-decoder cross-attention"),
  ):
    if c.get(key, False):
      errors.append(f"{key}=True: unsupported ({why})")
  if errors:
    raise ValueError("cannot import this GPT-2 config:\n  " + "\n  ".join(errors))
  d_model = c["n_embd"]
  values = dict(
    vocab_size=c["vocab_size"],
    d_model=d_model,
    num_layers=c["n_layer"],
    num_heads=c["n_head"],
    max_seq_len=c["n_positions"],
    d_ff=c.get("n_inner") or 4 * d_model,
    norm_eps=c.get("layer_norm_epsilon", 1e-5),
    activation=_ACTIVATIONS_FROM_HF[activation],
    attn_scale="default" if c.get("scale_attn_weights", True) else "one",
    tie_embeddings=c.get("tie_word_embeddings", True),
  )
  values.update(overrides)
  return gpt2(**values)


def config_to_hf(cfg: TransformerConfig) -> dict:
  """The ``config.json`` dict of a `gpt2`-layout config; ``ValueError`` lists what GPT-2 cannot
  hold."""
  wanted = dict(
    norm="layernorm",
    attn_norm="pre",
    mlp_norm="pre",
    final_norm=True,
    positions="learned",
    use_bias=True,
    causal=True,
    mlp_residual=True,
  )
  errors = [
    f"{k}={getattr(cfg, k)!r} (GPT-2 needs {v!r})"
    for k, v in wanted.items()
    if getattr(cfg, k) != v
  ]
  if cfg.activation not in _ACTIVATIONS_TO_HF:
    errors.append(f"activation={cfg.activation!r} (GPT-2 takes {', '.join(_ACTIVATIONS_TO_HF)})")
  if cfg.kv_heads != cfg.num_heads:
    errors.append(f"num_kv_heads={cfg.num_kv_heads} (GPT-2 has no grouped-query attention)")
  if cfg.head_size * cfg.num_heads != cfg.d_model:
    errors.append(f"head_dim={cfg.head_dim} (GPT-2 needs num_heads * head_dim == d_model)")
  if cfg.attn_scale not in ("default", "one"):
    errors.append(f"attn_scale={cfg.attn_scale!r} (GPT-2 scales by 1/sqrt(head_dim) or not at all)")
  if errors:
    raise ValueError("this model has no GPT-2 equivalent:\n  " + "\n  ".join(errors))
  return {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "vocab_size": cfg.vocab_size,
    "n_positions": cfg.max_seq_len,
    "n_embd": cfg.d_model,
    "n_layer": cfg.num_layers,
    "n_head": cfg.num_heads,
    "n_inner": cfg.d_ff,
    "activation_function": _ACTIVATIONS_TO_HF[cfg.activation],
    "layer_norm_epsilon": cfg.norm_eps,
    "scale_attn_weights": cfg.attn_scale == "default",
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "tie_word_embeddings": cfg.tie_embeddings,
    # GPT-2's <|endoftext|> is its last id; HF's default (50256) is out of range for smaller
    # vocabularies.
    "bos_token_id": cfg.vocab_size - 1,
    "eos_token_id": cfg.vocab_size - 1,
    "dtype": cfg.param_dtype,
  }


# --- parameters -----------------------------------------------------------------------------------

_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def params_from_hf(cfg: TransformerConfig, tensors: dict[str, np.ndarray]) -> dict:
  """HF GPT-2 state dict (numpy) → our pure params dict, in ``cfg.param_dtype``."""
  tensors = {
    k.removeprefix("transformer."): v
    for k, v in tensors.items()
    if not _BUFFER.fullmatch(k.removeprefix("transformer."))
  }
  if cfg.tie_embeddings:
    tensors.pop("lm_head.weight", None)  # older checkpoints store the tied copy too
  used = set()

  def take(name, shape):
    if name not in tensors:
      raise ValueError(f"GPT-2 checkpoint: missing tensor {name!r}")
    array = tensors[name]
    if tuple(array.shape) != tuple(shape):
      raise ValueError(
        f"GPT-2 checkpoint: {name!r} has shape {tuple(array.shape)}, the config needs "
        f"{tuple(shape)}"
      )
    used.add(name)
    return np.asarray(
      array, np.float32
    )  # f32 in between: exact for F16/BF16, and numpy casts it out

  d, h, dh, f, v = cfg.d_model, cfg.num_heads, cfg.head_size, cfg.d_ff, cfg.vocab_size
  pad = cfg.padded_vocab - v

  def norm(prefix):
    return {"scale": take(f"{prefix}.weight", (d,)), "bias": take(f"{prefix}.bias", (d,))}

  blocks = {}
  for i in range(cfg.num_layers):
    p = f"h.{i}"
    qkv, qkv_bias = (
      take(f"{p}.attn.c_attn.weight", (d, 3 * d)),
      take(f"{p}.attn.c_attn.bias", (3 * d,)),
    )
    q, k, v_ = (qkv[:, j * d : (j + 1) * d].reshape(d, h, dh) for j in range(3))
    q_b, k_b, v_b = (qkv_bias[j * d : (j + 1) * d].reshape(h, dh) for j in range(3))
    blocks[str(i)] = {
      "attn_norm": norm(f"{p}.ln_1"),
      "attn": {
        "q": q,
        "k": k,
        "v": v_,
        "q_bias": q_b,
        "k_bias": k_b,
        "v_bias": v_b,
        "o": take(f"{p}.attn.c_proj.weight", (d, d)).reshape(h, dh, d),
        "o_bias": take(f"{p}.attn.c_proj.bias", (d,)),
      },
      "mlp_norm": norm(f"{p}.ln_2"),
      "mlp": {
        "wi": take(f"{p}.mlp.c_fc.weight", (d, f)),
        "wi_bias": take(f"{p}.mlp.c_fc.bias", (f,)),
        "wo": take(f"{p}.mlp.c_proj.weight", (f, d)),
        "wo_bias": take(f"{p}.mlp.c_proj.bias", (d,)),
      },
    }
  params = {
    "token_embedding": np.pad(take("wte.weight", (v, d)), ((0, pad), (0, 0))),
    "position_embedding": take("wpe.weight", (cfg.max_seq_len, d)),
    "blocks": blocks,
    "final_norm": norm("ln_f"),
  }
  if not cfg.tie_embeddings:
    params["unembedding"] = np.pad(take("lm_head.weight", (v, d)).T, ((0, 0), (0, pad)))
  unused = sorted(set(tensors) - used)
  if unused:
    raise ValueError(
      f"GPT-2 checkpoint: unexpected tensors {unused[:8]}{' ...' if len(unused) > 8 else ''} "
      "(not a plain GPT2LMHeadModel / GPT2Model?)"
    )
  params = jax.tree.map(lambda a: jnp.asarray(a, cfg.params_dtype), params)
  return stack_layers(params) if cfg.scan_layers else params


def params_to_hf(cfg: TransformerConfig, params: dict) -> dict[str, np.ndarray]:
  """Our params (looped or scanned) → the GPT2LMHeadModel state dict (numpy,
  ``cfg.param_dtype``)."""
  config_to_hf(cfg)  # refuse models GPT-2 cannot express
  if cfg.scan_layers:
    params = unstack_layers(params)
  blocks = {
    str(k): b for k, b in params["blocks"].items()
  }  # int keys (nnx.to_pure_dict) or str (train state)
  d, v = cfg.d_model, cfg.vocab_size

  def arr(x):
    return np.asarray(x)

  out = {
    "wte.weight": arr(params["token_embedding"])[:v],
    "wpe.weight": arr(params["position_embedding"]),
    "ln_f.weight": arr(params["final_norm"]["scale"]),
    "ln_f.bias": arr(params["final_norm"]["bias"]),
  }
  for i in range(cfg.num_layers):
    b, p = blocks[str(i)], f"h.{i}"
    a, m = b["attn"], b["mlp"]
    out.update(
      {
        f"{p}.ln_1.weight": arr(b["attn_norm"]["scale"]),
        f"{p}.ln_1.bias": arr(b["attn_norm"]["bias"]),
        f"{p}.attn.c_attn.weight": np.concatenate(
          [arr(a[n]).reshape(d, d) for n in ("q", "k", "v")], axis=1
        ),
        f"{p}.attn.c_attn.bias": np.concatenate(
          [arr(a[n]).reshape(d) for n in ("q_bias", "k_bias", "v_bias")]
        ),
        f"{p}.attn.c_proj.weight": arr(a["o"]).reshape(d, d),
        f"{p}.attn.c_proj.bias": arr(a["o_bias"]),
        f"{p}.ln_2.weight": arr(b["mlp_norm"]["scale"]),
        f"{p}.ln_2.bias": arr(b["mlp_norm"]["bias"]),
        f"{p}.mlp.c_fc.weight": arr(m["wi"]),
        f"{p}.mlp.c_fc.bias": arr(m["wi_bias"]),
        f"{p}.mlp.c_proj.weight": arr(m["wo"]),
        f"{p}.mlp.c_proj.bias": arr(m["wo_bias"]),
      }
    )
  out = {f"transformer.{k}": np.ascontiguousarray(x, cfg.params_dtype) for k, x in out.items()}
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = np.ascontiguousarray(
      arr(params["unembedding"])[:, :v].T, cfg.params_dtype
    )
  return out


# --- files ----------------------------------------------------------------------------------------

_WEIGHT_NAMES = (
  SAFETENSORS_NAME,
  SAFETENSORS_NAME + ".index.json",
  PYTORCH_NAME,
  PYTORCH_NAME + ".index.json",
)


def is_hf_dir(path: str | os.PathLike) -> bool:
  """A Hugging Face model directory (config.json beside its weights), not a training workdir of
  ours."""
  path = pathlib.Path(path)
  return (
    path.is_dir()
    and not (path / "checkpoints").is_dir()
    and (path / "config.json").exists()
    and any((path / name).exists() for name in _WEIGHT_NAMES)
  )


def _weights_file(directory: pathlib.Path) -> pathlib.Path:
  for name in _WEIGHT_NAMES:
    if (directory / name).exists():
      return directory / name
  raise FileNotFoundError(
    f"{directory}: no {SAFETENSORS_NAME} or {PYTORCH_NAME} (nor a sharded index of either)"
  )


def load_hf_gpt2(path: str | os.PathLike, **overrides) -> tuple[TransformerConfig, dict]:
  """(config, params) of an HF GPT-2 checkpoint.

  ``path``: a directory holding ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``
  (or a sharded ``*.index.json``), or one weights file with its ``config.json`` beside it.
  ``overrides`` go to :func:`config_from_hf` (e.g. ``scan_layers=True``).
  """
  path = pathlib.Path(path)
  weights = _weights_file(path) if path.is_dir() else path
  config_path = weights.parent / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(
      f"{config_path}: missing (the GPT-2 config.json must sit beside the weights)"
    )
  cfg = config_from_hf(json.loads(config_path.read_text()), **overrides)
  return cfg, params_from_hf(cfg, read_tensors(weights))


def save_hf_gpt2(
  cfg: TransformerConfig, params: dict, out_dir: str | os.PathLike, format: str = "safetensors"
) -> pathlib.Path:
  """Write ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin`` with
  ``format='pytorch'``, which needs torch) that
  ``transformers.GPT2LMHeadModel.from_pretrained(out_dir)`` loads."""
  if format not in ("safetensors", "pytorch"):
    raise ValueError(f"save_hf_gpt2: format={format!r}: must be 'safetensors' or 'pytorch'")
  hf_config = config_to_hf(cfg)
  tensors = params_to_hf(cfg, params)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
  if format == "safetensors":
    write_safetensors(out_dir / SAFETENSORS_NAME, tensors)
  else:
    _write_pytorch(out_dir / PYTORCH_NAME, tensors)
  return out_dir


def to_model(cfg: TransformerConfig, params: dict) -> Transformer:
  """The Transformer holding ``params`` (structure from an abstract model: no weights are
  initialised)."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, params)
