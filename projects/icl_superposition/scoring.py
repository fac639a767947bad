"""Teacher-forced answer probabilities, top-K complete outputs and residual patching for any
superpose.nn model.

One jitted call per batch of prompts (spec §1.3, §2.4, §3):

1. prefill the right-padded prompts into a KV cache (optionally overwriting the residual stream
   after block ``patch_layer`` at each prompt's last token with a given vector: task-vector
   patching);
2. P(answer_i + terminator | prompt) for every task answer, teacher forced from the cache (no
   renormalisation: 1 − Σ_i P(answer_i) is the mass elsewhere);
3. the model's own most likely complete outputs: each of the ``top_first`` most likely first tokens
   extended greedily until the terminator (at most ``max_new`` tokens; outputs that do not end are
   dropped). With the task answers they form the candidate set whose K-th largest probability is
   ``k_prob``; r = the number of task answers with P ≥ k_prob (the paper's "tasks solved in
   parallel", its beam search replaced by first-token top-M plus greedy completion, exact for
   single-character answers);
4. the residual stream at each prompt's last token after every block (task vectors).

The prompt's tokens must be a prefix of prompt + answer (checked; always true for one token per
character).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superpose.nn.cache import init_cache

Encode = Callable[[str], Sequence[int]]


@dataclasses.dataclass
class Scores:
  answer_prob: np.ndarray  # (N, K) P(answer_k + terminator | prompt)
  answer_logp: np.ndarray  # (N, K) its natural log (finite where the probability underflows)
  k_prob: np.ndarray  # (N,) the K-th largest complete-output probability among the candidates
  r: np.ndarray  # (N,) task answers with P ≥ k_prob
  top_outputs: list  # per prompt: [(output token ids, probability)] of the greedy candidates
  last_hidden: np.ndarray | None = None  # (L+1, N, D) residual stream at the prompt's last token

  @property
  def other(self) -> np.ndarray:
    return 1.0 - self.answer_prob.sum(-1)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _take_last(x_BT, index_B):
  return jnp.take_along_axis(x_BT, index_B.reshape(index_B.shape + (1,) * (x_BT.ndim - 1)), axis=1)[
    :, 0
  ]


@functools.partial(
  jax.jit,
  static_argnums=(0,),
  static_argnames=("top_first", "max_new", "patch_layer", "want_hidden"),
)
def _score_batch(
  graphdef,
  state,
  prompt_BT,
  lengths_B,
  answers_BMN,
  answer_lens_BM,
  terminator,
  patch_BD,
  *,
  top_first: int,
  max_new: int,
  patch_layer: int | None,
  want_hidden: bool,
):
  model = nnx.merge(graphdef, state)
  B, T = prompt_BT.shape
  L = answers_BMN.shape[-1]
  cache = init_cache(model.cfg, B, T + max(L, max_new) + 1)
  positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  segments_BT = (positions_BT < lengths_B[:, None]).astype(jnp.int32)
  is_last_BT1 = (positions_BT == (lengths_B - 1)[:, None])[..., None]
  hook = None
  if patch_layer is not None:

    def hook(index, x_BTD):
      return jnp.where(
        is_last_BT1 & (index == patch_layer), patch_BD[:, None, :].astype(x_BTD.dtype), x_BTD
      )

  out = model(
    prompt_BT,
    positions_BT=positions_BT,
    segment_ids_BT=segments_BT,
    cache=cache,
    hook=hook,
    return_hidden=want_hidden,
  )
  cache = out.cache
  first_logp_BV = jax.nn.log_softmax(_take_last(out.logits_BTV, lengths_B - 1))
  hidden = (
    None
    if not want_hidden
    else jnp.take_along_axis(out.hidden, (lengths_B - 1)[None, :, None, None], axis=2)[:, :, 0]
  )

  def continuation_logp(tokens_BN, lens_B):
    """log P(tokens[:len] | prompt) from the prefilled cache."""
    n = tokens_BN.shape[1]
    pos_BN = lengths_B[:, None] + jnp.arange(n, dtype=jnp.int32)
    logp_BNV = jax.nn.log_softmax(model(tokens_BN, positions_BT=pos_BN, cache=cache).logits_BTV)
    lp_B = jnp.take_along_axis(first_logp_BV, tokens_BN[:, :1], axis=1)[:, 0]
    if n > 1:
      step_BN = jnp.take_along_axis(logp_BNV[:, :-1], tokens_BN[:, 1:, None], axis=2)[..., 0]
      lp_B = lp_B + (step_BN * (jnp.arange(1, n) < lens_B[:, None])).sum(-1)
    return lp_B

  answer_logp_BM = jnp.stack(
    [
      continuation_logp(answers_BMN[:, k], answer_lens_BM[:, k])
      for k in range(answers_BMN.shape[1])
    ],
    axis=1,
  )

  # Greedy completions of the top first tokens (each from the same prefilled cache).
  top_BM = jax.lax.top_k(first_logp_BV, top_first)[1].astype(jnp.int32)
  outputs, output_logps = [], []
  for m in range(top_first):
    tokens_BN = jnp.zeros((B, max_new), jnp.int32).at[:, 0].set(top_BM[:, m])
    logp_B = jnp.take_along_axis(first_logp_BV, top_BM[:, m : m + 1], axis=1)[:, 0]
    done_B = top_BM[:, m] == terminator
    c = cache
    for n in range(1, max_new):
      prev_B = tokens_BN[:, n - 1]
      o = model(prev_B[:, None], positions_BT=(lengths_B + n - 1)[:, None], cache=c)
      c = o.cache
      step_logp_BV = jax.nn.log_softmax(o.logits_BTV[:, 0])
      nxt_B = jnp.argmax(step_logp_BV, -1).astype(jnp.int32)
      nxt_B = jnp.where(done_B, 0, nxt_B)
      logp_B = logp_B + jnp.where(
        done_B, 0.0, jnp.take_along_axis(step_logp_BV, nxt_B[:, None], axis=1)[:, 0]
      )
      tokens_BN = tokens_BN.at[:, n].set(nxt_B)
      done_B = done_B | (nxt_B == terminator)
    outputs.append(tokens_BN)
    output_logps.append(jnp.where(done_B, logp_B, -jnp.inf))
  return answer_logp_BM, jnp.stack(outputs, 1), jnp.stack(output_logps, 1), hidden


def _strip(tokens: Sequence[int], terminator: int) -> tuple[int, ...]:
  out = []
  for t in tokens:
    out.append(int(t))
    if t == terminator:
      break
  return tuple(out)


def score(
  model: nnx.Module,
  prompts: Sequence[str],
  answers: Sequence[Sequence[str]],
  encode: Encode,
  *,
  prefix: Sequence[int] = (),
  terminator: str = "\n",
  answer_terminator: bool = True,
  batch_size: int = 64,
  top_first: int = 4,
  max_new: int | None = None,
  patch_layer: int | None = None,
  patch: np.ndarray | None = None,
  want_hidden: bool = False,
  length_multiple: int = 64,
  progress: Callable | None = None,
) -> Scores:
  """Scores for ``prompts`` (texts) and their task ``answers`` (same K per prompt; see the module
  docstring).

  ``encode`` maps text to token ids; ``prefix`` (e.g. ``[bos]``) goes before every prompt. The
  answers are scored with the terminator after them (the from-scratch protocol) or, with
  ``answer_terminator=False``, without it (the LLM protocol; greedy outputs are then compared
  without their terminator). ``patch``: (D,) or (N, D) vectors written after block ``patch_layer``
  at each prompt's last token.
  """
  if len(prompts) != len(answers) or not prompts:
    raise ValueError(f"{len(prompts)} prompts but {len(answers)} answer lists")
  K = len(answers[0])
  if any(len(a) != K for a in answers):
    raise ValueError("every prompt needs the same number of task answers")
  if (patch is None) != (patch_layer is None):
    raise ValueError("pass patch and patch_layer together")
  term_ids = list(encode(terminator))
  if len(term_ids) != 1:
    raise ValueError(f"the terminator {terminator!r} must be one token, got {term_ids}")
  prompt_ids, answer_ids = [], []
  for text, ans in zip(prompts, answers):
    p = list(prefix) + list(encode(text))
    prompt_ids.append(p)
    row = []
    for a in ans:
      full = list(prefix) + list(encode(text + a + (terminator if answer_terminator else "")))
      if full[: len(p)] != p:
        raise ValueError(
          f"the prompt's tokens are not a prefix of prompt + answer {a!r}; score with a "
          "tokenizer that splits at the separator"
        )
      row.append(full[len(p) :])
    answer_ids.append(row)
  max_answer = max(len(a) for row in answer_ids for a in row)
  max_new = max_new or max_answer + 1
  N = len(prompts)
  T = _round_up(max(len(p) for p in prompt_ids), length_multiple)
  L = _round_up(max_answer, 4)
  graphdef, state = nnx.split(model)
  D = model.cfg.d_model
  patch_all = (
    np.zeros((N, D), np.float32)
    if patch is None
    else np.broadcast_to(np.asarray(patch, np.float32), (N, D))
  )
  probs, logps, k_prob, r, tops, hidden = [], [], [], [], [], []
  for start in range(0, N, batch_size):
    idx = list(range(start, min(start + batch_size, N)))
    rows = idx + [idx[0]] * (batch_size - len(idx))  # fixed batch shape: one compile
    prompt_BT = np.zeros((batch_size, T), np.int32)
    lengths_B = np.zeros(batch_size, np.int32)
    ans_BMN = np.zeros((batch_size, K, L), np.int32)
    ans_len_BM = np.zeros((batch_size, K), np.int32)
    for b, i in enumerate(rows):
      prompt_BT[b, : len(prompt_ids[i])] = prompt_ids[i]
      lengths_B[b] = len(prompt_ids[i])
      for k, a in enumerate(answer_ids[i]):
        ans_BMN[b, k, : len(a)] = a
        ans_len_BM[b, k] = len(a)
    a_lp, outs, out_lp, hid = jax.device_get(
      _score_batch(
        graphdef,
        state,
        prompt_BT,
        lengths_B,
        ans_BMN,
        ans_len_BM,
        np.int32(term_ids[0]),
        patch_all[rows],
        top_first=top_first,
        max_new=max_new,
        patch_layer=patch_layer,
        want_hidden=want_hidden,
      )
    )
    for b, i in enumerate(idx):
      p_answers = np.exp(a_lp[b].astype(np.float64))
      candidates = {tuple(a): float(p) for a, p in zip(answer_ids[i], p_answers)}
      greedy = []
      for m in range(outs.shape[1]):
        if np.isfinite(out_lp[b, m]):
          key = _strip(outs[b, m], term_ids[0])
          key = key if answer_terminator else key[:-1]
          candidates.setdefault(key, float(np.exp(out_lp[b, m])))
          greedy.append((key, float(np.exp(out_lp[b, m]))))
      kth = sorted(candidates.values(), reverse=True)[min(K, len(candidates)) - 1]
      probs.append(p_answers)
      logps.append(a_lp[b])
      k_prob.append(kth)
      r.append(int((p_answers >= kth).sum()))
      tops.append(greedy)
      if want_hidden:
        hidden.append(hid[:, b])
    if progress is not None:
      progress(len(idx))
  return Scores(
    answer_prob=np.asarray(probs),
    answer_logp=np.asarray(logps),
    k_prob=np.asarray(k_prob),
    r=np.asarray(r),
    top_outputs=tops,
    last_hidden=np.stack(hidden, axis=1) if want_hidden else None,
  )


def kl_target_model(target: np.ndarray, answer_logp: np.ndarray) -> np.ndarray:
  """KL(target ‖ P) = Σ_i t_i (log t_i − log P_i) per prompt, from log P (spec §1.3: P unnormalised,
  0·log 0 = 0)."""
  t = np.asarray(target, np.float64)
  log_t = np.log(np.where(t > 0, t, 1.0))
  # tasks with t = 0 add 0 even where P = 0 (log P = −∞); a task with t > 0 and P = 0 makes the KL ∞
  return np.where(t > 0, t * (log_t - np.asarray(answer_logp, np.float64)), 0.0).sum(-1)


def mean_ci(x) -> dict[str, float]:
  """Mean and half-width of its normal 95 % interval (1.96 standard errors; 0 for a single
  value)."""
  x = np.asarray(x, np.float64)
  half = 1.959964 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0
  return {"mean": float(x.mean()), "ci95": float(half)}
