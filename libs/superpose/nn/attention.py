"""Multi-head / grouped-query attention and its three implementations.

* ``xla``: explicit einsums, f32 softmax, any boolean mask (causal, segments, cache); the only one
  that can return attention probabilities. Grouped heads attend to their shared K/V without
  materialising repeated K/V. Causal self-attention without a cache takes the queries in blocks of
  ``cfg.causal_block`` rows, each scoring only the keys up to its own last row: the keys after it
  are masked for every row of the block, their probabilities exactly 0, so the result is the same
  (up to the order of the softmax sums) for about (n − 1) / 2n less score and softmax work with n
  blocks (one attention layer's forward and backward at T 256 with 64-row blocks: 1.34× at d 256,
  1.27× at d 512 on a 2-core CPU; the whole train step 1.12× / 1.05×, benchmarks/lm_step.py).
* ``cudnn``: ``jax.nn.dot_product_attention`` with ``implementation='cudnn'`` on GPU with bf16/fp16
  compute, and jax's own XLA path elsewhere (CPU, TPU, f32 compute; logged once on GPU), so it is
  testable on CPU. Plain causal attention uses ``is_causal``; segment ids and caches are passed as
  an explicit mask (cuDNN turns it into a bias: correct, slower).
* ``splash``: jax's TPU splash attention (Pallas), in interpret mode off TPU. Causal or full mask
  plus segment ids; sequence length must be a multiple of the block size (128, or the length itself
  when shorter). Under a mesh it runs inside ``shard_map`` over batch and kv heads. It cannot read a
  KV cache or return probabilities: those raise ``ValueError``.
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from superpose.nn import cache as cache_lib
from superpose.nn import deltas, layers, sharding
from superpose.nn.config import TransformerConfig

log = logging.getLogger(__name__)
_LOGGED_FALLBACKS: set = set()
MASK_VALUE = -1e30  # finite, so a fully masked row gives a uniform (not NaN) distribution


class Attention(nnx.Module):
  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, h, kv, dh, pdt = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_size, cfg.params_dtype
    init = nnx.initializers.normal(cfg.init_std)
    out_init = nnx.initializers.normal(
      cfg.init_std / math.sqrt(2 * cfg.num_layers)
    )  # GPT-2 scaling
    zeros = nnx.initializers.zeros
    self.q = sharding.param(rngs, init, (d, h, dh), ("embed", "heads", "head_dim"), pdt)
    self.k = sharding.param(rngs, init, (d, kv, dh), ("embed", "kv_heads", "head_dim"), pdt)
    self.v = sharding.param(rngs, init, (d, kv, dh), ("embed", "kv_heads", "head_dim"), pdt)
    self.o = sharding.param(rngs, out_init, (h, dh, d), ("heads", "head_dim", "embed"), pdt)
    if cfg.use_bias:
      self.q_bias = sharding.param(rngs, zeros, (h, dh), ("heads", "head_dim"), pdt)
      self.k_bias = sharding.param(rngs, zeros, (kv, dh), ("kv_heads", "head_dim"), pdt)
      self.v_bias = sharding.param(rngs, zeros, (kv, dh), ("kv_heads", "head_dim"), pdt)
      self.o_bias = sharding.param(rngs, zeros, (d,), ("embed",), pdt)
    else:
      self.q_bias = self.k_bias = self.v_bias = self.o_bias = None

  def _project(self, x_BTD, kernel, bias, heads_axis, delta, name):
    y = layers.einsum("btd,dhk->bthk", x_BTD, kernel[...], self.cfg.compute_dtype)
    y = deltas.add_linear(y, x_BTD, delta, name, 1, self.cfg.compute_dtype)
    if bias is not None:
      y = deltas.add_vector(y + bias[...].astype(y.dtype), delta, f"{name}_bias")
    return sharding.constrain(y, ("batch", "length", heads_axis, None))

  def __call__(
    self,
    x_BTD,
    *,
    positions_BT,
    mask_BTS,
    segment_ids_BT=None,
    kv_cache=None,
    return_probs=False,
    delta: deltas.Delta | None = None,
  ):
    """Returns (out_BTD, updated (k, v) cache of this layer or None, probs_BHTS or None).

    delta: per-token deltas of this layer's parameters. Keys and values are computed with each
    token's own gate before they enter the cache, so a cached decode needs nothing more.
    """
    cfg = self.cfg
    q_BTHA = self._project(x_BTD, self.q, self.q_bias, "act_heads", delta, "q")
    k_BTKA = self._project(x_BTD, self.k, self.k_bias, "act_kv_heads", delta, "k")
    v_BTKA = self._project(x_BTD, self.v, self.v_bias, "act_kv_heads", delta, "v")
    if cfg.positions == "rope":
      q_BTHA = layers.rope(q_BTHA, positions_BT, cfg.rope_theta)
      k_BTKA = layers.rope(k_BTKA, positions_BT, cfg.rope_theta)
    new_cache = None
    if kv_cache is not None:
      k_cache, v_cache = kv_cache
      k_BTKA = cache_lib.write_rows(
        k_cache, k_BTKA, positions_BT
      )  # now (B, S, K, A) over all slots
      v_BTKA = cache_lib.write_rows(v_cache, v_BTKA, positions_BT)
      cache_axes = ("batch", "cache_length", "act_kv_heads", None)
      k_BTKA, v_BTKA = (
        sharding.constrain(k_BTKA, cache_axes),
        sharding.constrain(v_BTKA, cache_axes),
      )
      new_cache = (k_BTKA, v_BTKA)
    out_BTHA, probs = attend(
      cfg,
      q_BTHA,
      k_BTKA,
      v_BTKA,
      mask_BTS=mask_BTS,
      segment_ids_BT=segment_ids_BT,
      uses_cache=kv_cache is not None,
      return_probs=return_probs,
    )
    y_BTD = layers.einsum("bthk,hkd->btd", out_BTHA, self.o[...], cfg.compute_dtype)
    y_BTD = deltas.add_linear(y_BTD, out_BTHA, delta, "o", 2, cfg.compute_dtype)
    if self.o_bias is not None:
      y_BTD = deltas.add_vector(y_BTD + self.o_bias[...].astype(y_BTD.dtype), delta, "o_bias")
    return y_BTD, new_cache, probs


def attend(
  cfg: TransformerConfig,
  q_BTHA,
  k_BSKA,
  v_BSKA,
  *,
  mask_BTS,
  segment_ids_BT,
  uses_cache,
  return_probs,
):
  """Dispatch to the configured implementation. Returns (out_BTHA, probs_BHTS or None)."""
  if cfg.attention == "xla":
    # Blocks only where the mask is inside the causal triangle: causal self-attention without a
    # cache (whose every row also sees its own position, so no row of a block is left empty).
    block = cfg.causal_block if cfg.causal and not uses_cache and not return_probs else 0
    return xla_attention(q_BTHA, k_BSKA, v_BSKA, mask_BTS, cfg.scale, return_probs, block)
  if return_probs:
    raise ValueError(
      f"return_attention needs attention='xla' (the model uses {cfg.attention!r}, "
      "whose fused kernel never forms the probabilities)"
    )
  if cfg.attention == "cudnn":
    return cudnn_attention(
      q_BTHA,
      k_BSKA,
      v_BSKA,
      mask_BTS,
      cfg.scale,
      cfg.causal,
      plain=segment_ids_BT is None and not uses_cache,
    ), None
  if uses_cache:
    raise ValueError(
      "attention='splash' cannot read a KV cache; decode with attention='xla' or 'cudnn' "
      "(cfg.replace(attention='xla') runs the same weights)"
    )
  return splash_attention(q_BTHA, k_BSKA, v_BSKA, segment_ids_BT, cfg.scale, cfg.causal), None


def xla_attention(q_BTHA, k_BSKA, v_BSKA, mask_BTS, scale, return_probs=False, causal_block=0):
  """Softmax attention by einsums. ``causal_block`` > 0 (only for a mask inside the causal
  triangle, queries and keys of one sequence): query rows [a, b) in blocks of that many attend to
  keys [0, b) only."""
  t = q_BTHA.shape[1]
  if causal_block and not return_probs and t > causal_block and k_BSKA.shape[1] == t:
    ends = list(range(causal_block, t, causal_block)) + [t]
    outs = [
      _dense_attention(
        q_BTHA[:, a:e], k_BSKA[:, :e], v_BSKA[:, :e], mask_BTS[:, a:e, :e], scale, False
      )[0]
      for a, e in zip([0] + ends[:-1], ends)
    ]
    return jnp.concatenate(outs, axis=1), None
  return _dense_attention(q_BTHA, k_BSKA, v_BSKA, mask_BTS, scale, return_probs)


def _dense_attention(q_BTHA, k_BSKA, v_BSKA, mask_BTS, scale, return_probs):
  b, t, h, d = q_BTHA.shape
  kv = k_BSKA.shape[2]
  q_BTKGA = q_BTHA.reshape(b, t, kv, h // kv, d)
  logits = (
    jnp.einsum("btkgd,bskd->bkgts", q_BTKGA, k_BSKA, preferred_element_type=jnp.float32) * scale
  )
  logits = jnp.where(mask_BTS[:, None, None], logits, MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum(
    "bkgts,bskd->btkgd", probs.astype(v_BSKA.dtype), v_BSKA, preferred_element_type=jnp.float32
  )
  out_BTHA = out.astype(q_BTHA.dtype).reshape(b, t, h, d)
  return out_BTHA, probs.reshape(b, h, t, -1) if return_probs else None


def cudnn_attention(q_BTHA, k_BSKA, v_BSKA, mask_BTS, scale, causal, plain):
  implementation = (
    None  # jax's XLA path: off GPU, and for f32 compute, which cuDNN flash attention lacks
  )
  if jax.default_backend() == "gpu":
    if q_BTHA.dtype in (jnp.bfloat16, jnp.float16):
      implementation = "cudnn"
    elif q_BTHA.dtype not in _LOGGED_FALLBACKS:
      _LOGGED_FALLBACKS.add(q_BTHA.dtype)
      log.warning(
        "attention='cudnn' needs bf16/fp16 compute; %s runs jax's XLA attention", q_BTHA.dtype
      )
  if plain:  # no segments, no cache: let the kernel skip the masked blocks itself
    return jax.nn.dot_product_attention(
      q_BTHA, k_BSKA, v_BSKA, scale=scale, is_causal=causal, implementation=implementation
    )
  mask = jnp.broadcast_to(mask_BTS, (q_BTHA.shape[0],) + mask_BTS.shape[1:])[:, None]
  return jax.nn.dot_product_attention(
    q_BTHA, k_BSKA, v_BSKA, mask=mask, scale=scale, implementation=implementation
  )


@functools.lru_cache(maxsize=64)
def _splash_kernel(length: int, group: int, causal: bool, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  block = min(128, length)
  if length % block:
    raise ValueError(
      f"attention='splash' needs a sequence length that is a multiple of {block}; got {length}"
    )
  sizes = splash.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  one = splash.CausalMask((length, length)) if causal else splash.FullMask((length, length))
  # One MQA kernel per kv head: its `group` query heads share that head's K/V (GQA without repeats).
  # The kernel holds mask-info arrays; build them eagerly so that the cached kernel holds no
  # tracers.
  with jax.ensure_compile_time_eval():
    kernel = splash.make_splash_mqa(
      splash.MultiHeadMask([one] * group),
      block_sizes=sizes,
      head_shards=1,
      q_seq_shards=1,
      interpret=interpret,
    )
  return kernel, splash.SegmentIds


def splash_attention(q_BTHA, k_BSKA, v_BSKA, segment_ids_BT, scale, causal):
  b, t, h, d = q_BTHA.shape
  kv = k_BSKA.shape[2]
  if k_BSKA.shape[1] != t:
    raise ValueError(
      f"attention='splash' needs as many keys as queries; got {k_BSKA.shape[1]} and {t}"
    )
  kernel, segment_type = _splash_kernel(t, h // kv, causal, jax.default_backend() != "tpu")
  if segment_ids_BT is None:
    segment_ids_BT = jnp.ones((b, t), jnp.int32)

  def run(q_BKGTA, k_BKSA, v_BKSA, seg_BT):
    per_head = jax.vmap(
      lambda q, k, v, s: kernel(q, k, v, segment_ids=segment_type(s, s)), in_axes=(0, 0, 0, None)
    )
    return jax.vmap(per_head)(q_BKGTA, k_BKSA, v_BKSA, seg_BT)

  # Splash does not scale the logits itself; scaling q in f32 first keeps bf16 rounding as in xla.
  q = (q_BTHA.astype(jnp.float32) * scale).astype(q_BTHA.dtype)
  q_BKGTA = q.reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4)
  k_BKSA, v_BKSA = k_BSKA.transpose(0, 2, 1, 3), v_BSKA.transpose(0, 2, 1, 3)
  seg_BT = segment_ids_BT.astype(jnp.int32)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and math.prod(mesh.shape.values()) > 1:
    # A Pallas call is opaque to GSPMD: run it per shard of batch and kv heads.
    batch_axes, head_axes = _pad_spec(sharding.spec_for(("batch", "act_kv_heads"), (b, kv)), 2)
    q_spec = P(batch_axes, head_axes, None, None, None)
    kv_spec = P(batch_axes, head_axes, None, None)
    run = jax.shard_map(
      run,
      in_specs=(q_spec, kv_spec, kv_spec, P(batch_axes, None)),
      out_specs=q_spec,
      check_vma=False,
    )
  out_BKGTA = run(q_BKGTA, k_BKSA, v_BKSA, seg_BT)
  return out_BKGTA.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(q_BTHA.dtype)


def _pad_spec(spec: P, rank: int) -> P:
  return P(*(tuple(spec) + (None,) * (rank - len(spec))))
