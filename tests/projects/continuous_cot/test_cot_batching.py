"""Length-bucketed batches and the compact training forward: the row order stays a pure function of
(seed, step) and uses every row once per window; the compact forward equals the full KV-cached
forward at every column that can carry a loss (values and gradients), for a GPT-2 and a RoPE/GQA
model; a bucketed batch gives the loss and gradients of the same rows padded to T."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.continuous_cot import scaled as scaled_cfg
from projects.continuous_cot import data, thoughts as th, train
from superpose import nn
from superpose.nn.testing import random_model


@pytest.fixture(scope="module")
def problems():
  train_set, used = data.generate_split(96, 0)
  valid_set, _ = data.generate_split(4, 1, exclude=used)
  return train_set, valid_set


def _task(problems, method="coconut", batching="bucketed", seed=0, **cot):
  c = scaled_cfg.get_config("smoke")
  c.seed = seed
  c.cot.update(dict(method=method, batching=batching, bucket_window=4, bucket_multiple=8, **cot))
  return train.make_task(c.to_dict(), train=problems[0], valid=problems[1]).data


def test_bucketed_order_pure_function_and_one_pass_per_window(problems):
  task, again, other = _task(problems), _task(problems), _task(problems, seed=1)
  B, M = task.batch_size, task.window
  lens = task.prompt_lens
  for w in (0, 1, 5):  # 96 problems, 32 rows per window: windows cross epoch boundaries
    steps = range(w * M + 1, (w + 1) * M + 1)
    rows = [task.step_rows(s) for s in steps]
    assert sorted(np.concatenate(rows).tolist()) == list(range(w * M * B, (w + 1) * M * B))
    for r in rows:  # within a batch, prompts in ascending length
      assert (np.diff(lens[task.problem_index(r)]) >= 0).all()
  assert all((task.step_rows(s) == again.step_rows(s)).all() for s in (9, 1, 30))  # any call order
  assert any(
    (task.step_rows(s) != other.step_rows(s)).any() for s in range(1, 9)
  )  # the seed matters
  x, y = task.train_batch(7), again.train_batch(7)
  assert all((x[k] == y[k]).all() for k in x)
  halves = [task.train_batch(7, p, 2) for p in range(2)]
  assert all((np.concatenate([h[k] for h in halves]) == x[k]).all() for k in x)
  # The same rows as the padded order, less padding.
  padded = _task(problems, batching="padded")

  def pad(t, steps):
    batches = [t.train_batch(s) for s in steps]
    return 1 - sum(b["length"].sum() for b in batches) / sum(b["tokens"].size for b in batches)

  assert pad(task, range(1, 9)) < 0.5 * pad(padded, range(1, 9))
  assert sorted(np.concatenate([task.step_rows(s) for s in range(1, 5)]).tolist()) == sorted(
    np.concatenate([padded.step_rows(s) for s in range(1, 5)]).tolist()
  )


def _rows(rng, batch, width, prefix, U):
  tokens = rng.integers(0, 40, (batch, width)).astype(np.int32)
  starts = rng.integers(2, prefix + 1, batch).astype(np.int32)
  counts = rng.integers(0, U + 1, batch).astype(np.int32)
  return tokens, starts, counts


def _models(kind):
  if kind == "gpt2":
    cfg = th.model_config("tiny", vocab_size=40, max_seq_len=32)
  else:  # RoPE, grouped-query attention, RMSNorm, SwiGLU, 3 layers
    cfg = nn.llama(
      vocab_size=40, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=64, max_seq_len=32
    )
  return random_model(cfg, seed=0, scale=0.3)


def _compact_and_full(model, U=2, P=10, J=2):
  """(compact loss, full loss) as functions of the params, and the (B, N) valid mask: the same
  weighted log-probability sum, read from the compact forward and from the full forward at the
  compact columns."""
  tokens, starts, counts = _rows(np.random.default_rng(0), 5, P + U + J + 1, P, U)
  starts[0], counts[0] = P, U  # the widest row fills every column
  args = [jnp.asarray(x) for x in (tokens, starts, counts)]
  cols, valid = (
    np.asarray(a) for a in th.compact_columns(starts, counts, max_thoughts=U, rest_len=J)
  )
  weights = np.random.default_rng(1).random(cols.shape).astype(np.float32) * valid
  graphdef, _ = nnx.split(model)

  def compact(state):
    logits = th.compact_forward(
      nnx.merge(graphdef, state), *args, max_thoughts=U, prefix_len=P, rest_len=J
    )
    return (jax.nn.log_softmax(logits[..., :40]).max(-1) * weights).sum(), logits

  def full(state):
    logits = th.cached_forward(
      nnx.merge(graphdef, state),
      args[0],
      args[1],
      num_thoughts=U,
      num_thoughts_B=args[2],
      prefix_len=P,
      rest_len=J + 1,
    ).logits_BTV
    logits = jnp.take_along_axis(logits, jnp.asarray(cols)[..., None], axis=1)
    return (jax.nn.log_softmax(logits[..., :40]).max(-1) * weights).sum(), logits

  return compact, full, valid


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_compact_forward_equals_cached_forward(kind):
  model = _models(kind)
  compact, full, valid = _compact_and_full(model)
  state = nnx.split(model)[1]
  logits_c, logits_f = jax.jit(lambda s: compact(s)[1])(state), jax.jit(lambda s: full(s)[1])(state)
  np.testing.assert_allclose(
    np.asarray(logits_c)[valid], np.asarray(logits_f)[valid], atol=3e-5, rtol=1e-5
  )


@pytest.mark.slow
def test_compact_forward_gradients_equal_the_full_forward():
  model = _models("gpt2")
  compact, full, _ = _compact_and_full(model)
  state = nnx.split(model)[1]
  (loss_c, _), grads_c = jax.jit(jax.value_and_grad(compact, has_aux=True))(state)
  (loss_f, _), grads_f = jax.jit(jax.value_and_grad(full, has_aux=True))(state)
  np.testing.assert_allclose(float(loss_c), float(loss_f), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads_f)):  # f32 sums in another order
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 2e-4 * max(
      1.0, np.abs(np.asarray(b)).max()
    )


def test_compact_forward_needs_unscanned_blocks():
  cfg = th.model_config("tiny", vocab_size=40, max_seq_len=32, scan_layers=True)
  model = random_model(cfg, seed=0, scale=0.3)
  with pytest.raises(ValueError, match="scan_layers"):
    th.compact_forward(
      model,
      jnp.zeros((1, 8), jnp.int32),
      jnp.ones(1, jnp.int32),
      jnp.zeros(1, jnp.int32),
      max_thoughts=1,
      prefix_len=4,
      rest_len=1,
    )


def _same_rows(problems, method, step=3):
  """(bucketed task, its batch of ``step``, padded task, the same rows padded to T)."""
  # steps_per_stage=1: step 3 is stage 2; uniform_prob 0.5 and 3/4-hop problems mix the thought
  # counts
  task = _task(problems, method, steps_per_stage=1, uniform_prob=0.5)
  padded = _task(problems, method, batching="padded", steps_per_stage=1, uniform_prob=0.5)
  bucketed = task.train_batch(step)
  same = [padded.train_row(step, int(g), padded.T) for g in task.step_rows(step)]
  return task, bucketed, padded, {k: np.stack([r[k] for r in same]) for k in same[0]}


@pytest.mark.parametrize("method", train.METHODS)
def test_bucketed_batch_has_the_loss_of_the_same_rows_padded(problems, method):
  task, bucketed, padded, same = _same_rows(problems, method)
  assert bucketed["tokens"].shape[1] < padded.T and (bucketed["length"] == same["length"]).all()
  if method == "coconut":
    assert len(set(bucketed["num_thoughts"].tolist())) > 1
  model = task.spec.make_model()
  graphdef, state = nnx.split(model)
  lb = jax.jit(lambda s: task.spec.train_loss(nnx.merge(graphdef, s), bucketed))(state)
  lp = jax.jit(lambda s: padded.spec.train_loss(nnx.merge(graphdef, s), same))(state)
  np.testing.assert_allclose(float(lb[0]), float(lp[0]), rtol=1e-5)
  assert float(lb[1]["accuracy"]) == float(lp[1]["accuracy"])
  assert float(lb[1]["data/row_tokens"]) == pytest.approx(bucketed["length"].mean())
  assert float(lb[1]["data/pad_fraction"]) < float(lp[1]["data/pad_fraction"])


@pytest.mark.slow
def test_bucketed_batch_has_the_gradients_of_the_same_rows_padded(problems):
  task, bucketed, padded, same = _same_rows(problems, "coconut")
  graphdef, state = nnx.split(task.spec.make_model())
  lb, gb = jax.jit(
    jax.value_and_grad(lambda s: task.spec.train_loss(nnx.merge(graphdef, s), bucketed)[0])
  )(state)
  lp, gp = jax.jit(
    jax.value_and_grad(lambda s: padded.spec.train_loss(nnx.merge(graphdef, s), same)[0])
  )(state)
  np.testing.assert_allclose(float(lb), float(lp), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gb), jax.tree.leaves(gp)):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 2e-4 * max(
      1.0, np.abs(np.asarray(b)).max()
    )


@pytest.mark.slow
def test_bench_train_prints_the_ratio(capsys):
  from projects.continuous_cot import bench

  bench.main(
    [
      "--train",
      "--size",
      "tiny",
      "--batch",
      "4",
      "--problems",
      "60",
      "--window",
      "2",
      "--steps",
      "2",
      "--rounds",
      "2",
    ]
  )
  out = capsys.readouterr().out
  assert "ratio new / old real tokens/s" in out and "padding" in out
  ce = out.split("summed cross-entropy")[1].split("\n")[0]
  old, new = (
    float(x.split()[-1].rstrip(",")) for x in ce.split("old")[1].split("(")[0].split(", new")
  )
  assert old == pytest.approx(new, rel=1e-5)
