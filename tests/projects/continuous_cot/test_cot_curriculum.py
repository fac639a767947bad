"""The curriculum options of issue 20 §3: a separate stage-0 length, per-row node relabelling, the
optimizer reset at stage changes, the set-valued (frontier) loss, and the hop-k evaluation
metrics."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.continuous_cot import scaled as scaled_cfg
from projects.continuous_cot import data, graphs, metrics, rows, train
from superpose.train import config as config_lib, optim


@pytest.fixture(scope="module")
def problems():
  train_set, used = data.generate_split(64, 0)
  valid_set, _ = data.generate_split(4, 1, exclude=used)
  return train_set, valid_set


def _task(problems, **cot):
  c = scaled_cfg.get_config("smoke")
  c.cot.update(dict(bucket_window=4, **cot))
  return train.make_task(c.to_dict(), train=problems[0], valid=problems[1]).data


def test_stage0_length_is_separate(problems):
  task = _task(problems, steps_per_stage=10, stage0_steps=25)
  stages = [task.scheduled_stage(s) for s in range(1, 60)]
  assert stages[:25] == [0] * 25 and stages[25:35] == [1] * 10 and stages[35] == 2
  assert task.stage_starts(100) == [26, 36, 46, 56]  # stages 1..4 (the largest hop count is 4)
  same = _task(problems, steps_per_stage=10)
  assert [same.scheduled_stage(s) for s in (1, 10, 11, 21)] == [0, 0, 1, 2]
  with pytest.raises(config_lib.ConfigError, match="stage0_steps"):
    _task(problems, steps_per_stage=0, stage0_steps=5)


def test_stage0_epochs(problems):
  # 64 problems, batch 8: 8 steps per epoch; stage 0 = 2 epochs, then 1 epoch per stage
  task = _task(problems, steps_per_stage=0, epochs_per_stage=1, stage0_epochs=2)
  assert [task.scheduled_stage(s) for s in (1, 16, 17, 24, 25)] == [0, 0, 1, 1, 2]


def test_relabelled_rows_are_the_same_problem_under_new_ids(problems):
  rng = random.Random(3)
  for p in problems[0][:20]:
    q = rows.relabel_row(p, rng)
    assert q.num_nodes == graphs.MAX_NODES
    ids = {v for e in q.edges for v in e}
    assert max(ids) < graphs.MAX_NODES and len(ids) == len({v for e in p.edges for v in e})
    assert graphs.graph_hash(q) == graphs.graph_hash(
      graphs.Problem(graphs.MAX_NODES, p.edges, p.root, p.target, p.neg_target)
    )
    q.check()
    assert q.hops == p.hops and q.answer() == q.target
  # over many rows every node token occurs, not only the ids below the problem's node count
  task = _task(problems, relabel=True)
  seen = {t for g in range(64) for t in task.row_tokens_of(1, g)[0] if t < graphs.MAX_NODES}
  assert seen == set(range(graphs.MAX_NODES))
  plain = _task(problems)
  assert task.row_tokens_of(1, 5)[0] != plain.row_tokens_of(1, 5)[0]
  assert (
    task.row_tokens_of(1, 5)[0] == _task(problems, relabel=True).row_tokens_of(1, 5)[0]
  )  # pure function


def test_optimizer_reset_restarts_adam():
  params = {"w": jnp.ones((3, 2))}
  cfg = dict(lr=0.1, schedule="constant", weight_decay=0.0, clip_norm=0.0)
  tx, _ = optim.make_optimizer({**cfg, "reset_steps": (3,)}, params, 10)
  fresh, _ = optim.make_optimizer(cfg, params, 10)
  grads = [{"w": jnp.full((3, 2), g)} for g in (1.0, -2.0, 0.5, 4.0)]
  state = tx.init(params)
  outs = []
  for g in grads:
    u, state = tx.update(g, state, params)
    outs.append(u)
  # the update of step 3 is a first Adam step on grads[2]; step 4 the second step after it
  s0 = fresh.init(params)
  u3, s1 = fresh.update(grads[2], s0, params)
  u4, _ = fresh.update(grads[3], s1, params)
  np.testing.assert_allclose(outs[2]["w"], u3["w"], rtol=1e-6)
  np.testing.assert_allclose(outs[3]["w"], u4["w"], rtol=1e-6)
  # and without the reset, step 3 is not a first step
  s = fresh.init(params)
  for g in grads[:3]:
    u, s = fresh.update(g, s, params)
  assert not np.allclose(u["w"], u3["w"])


def test_reset_optimizer_sets_the_stage_starts(problems, tmp_path, monkeypatch):
  seen = {}

  def fake_train(cfg, workdir, task):
    seen.update(cfg["optim"])
    raise SystemExit(0)

  monkeypatch.setattr(train.loop, "train", fake_train)
  monkeypatch.setattr(
    train, "load_split", lambda cfg, key: problems[0] if key == "train_file" else problems[1]
  )
  c = scaled_cfg.get_config("smoke")
  c.cot.update(
    dict(reset_optimizer=True, steps_per_stage=3, stage0_steps=5, data_dir=str(tmp_path))
  )
  c.train.steps = 30
  with pytest.raises(SystemExit):
    train.run(c, str(tmp_path))
  assert list(seen["reset_steps"]) == [6, 9, 12, 15]


def test_set_nll():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25] + [1e-9] * 37, [0.1] * 40]]))
  mask = jnp.zeros((1, 40)).at[0, jnp.array([0, 1])].set(1.0)
  nll, mass = train.set_nll(logits, mask, jnp.array([[1.0, 0.0]]))
  assert float(nll) == pytest.approx(-np.log(0.75), rel=1e-5) and float(mass) == pytest.approx(
    0.75, rel=1e-5
  )


def test_set_loss_trains_on_the_label_pool(problems):
  """loss='set': the row's mask is its label pool; the loss is −log of the pool's mass, the drawn
  label's NLL is still logged; gradients reach the model."""
  task = _task(problems, loss="set", steps_per_stage=1)
  batch = task.train_batch(1)  # stage 0: the pool is the root's children on shortest paths
  for r, g in enumerate(task.step_rows(1)):
    p = task.train[int(task.problem_index(np.array([g]))[0])]
    assert set(np.flatnonzero(batch["label_set"][r])) == set(p.neighbor_k()[1])
  graphdef, state = nnx.split(task.spec.make_model())
  (loss, m), grads = jax.jit(
    jax.value_and_grad(lambda s: task.spec.train_loss(nnx.merge(graphdef, s), batch), has_aux=True)
  )(state)
  assert float(loss) == pytest.approx(float(m["set_nll"])) and float(m["label_nll"]) >= float(
    m["set_nll"]
  )
  assert (
    np.exp(-float(m["set_nll"])) <= float(m["set_mass"]) + 1e-6
  )  # Jensen: exp(mean(log m)) ≤ mean(m)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
  with pytest.raises(config_lib.ConfigError, match="loss"):
    _task(problems, loss="frontier")


def test_hop_metrics():
  logits = (
    jnp.zeros((2, 2, 40))
    .at[0, 0, 5]
    .set(9.0)
    .at[0, 1, 7]
    .set(9.0)
    .at[1, 0, 6]
    .set(9.0)
    .at[1, 1, 8]
    .set(9.0)
  )
  sets = jnp.zeros((2, 2, 40)).at[:, 0, 5].set(1.0).at[:, 1, 8].set(1.0)
  m = metrics.hop_metrics(logits, sets)
  assert m["hop1"].tolist() == [1.0, 0.0] and m["hop2"].tolist() == [0.0, 1.0]
  assert float(m["hop1_mass"][0]) == pytest.approx(np.exp(9) / (np.exp(9) + 39), rel=1e-5)


def test_eval_reports_hop_accuracy(problems):
  task = _task(problems)
  assert task.eval_hops == min(4, min(p.hops for p in problems[1])) >= 3
  batch = task.eval_set.batch(0)
  graphdef, state = nnx.split(task.spec.make_model())
  _, m = jax.jit(lambda s: task.spec.eval_loss(nnx.merge(graphdef, s), batch))(state)
  for k in range(1, task.eval_hops + 1):
    assert 0.0 <= float(m[f"hop{k}"]) <= 1.0 and 0.0 < float(m[f"hop{k}_mass"]) < 1.0
  # the padded path reads the same columns
  padded = _task(problems, batching="padded")
  _, mp = jax.jit(
    lambda s: padded.spec.eval_loss(nnx.merge(graphdef, s), padded.eval_set.batch(0))
  )(state)
  for k in ("acc", "hop1", "hop2_mass", "hop3"):
    assert float(mp[k]) == pytest.approx(float(m[k]), abs=1e-5)
  # CoT reads hop 1 at the same prompt's root column (teacher forced): the same number on the same
  # weights
  cot = _task(problems, method="cot")
  _, mc = jax.jit(lambda s, b: cot.spec.eval_loss(nnx.merge(graphdef, s), b))(
    state, cot.eval_set.batch(0)
  )
  assert float(mc["hop1"]) == pytest.approx(float(m["hop1"]), abs=1e-6)
  assert float(mc["hop1_mass"]) == pytest.approx(float(m["hop1_mass"]), abs=1e-5)
