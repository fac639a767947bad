"""The continuous-CoT trainer: curriculum rows token by token, loss masks, per-row thought counts,
smoke runs of the three methods through run(config, workdir), and resume giving the same batches."""

import json
import random

import numpy as np
import pytest

from superpose.train import config as config_lib

from configs.continuous_cot import paper as paper_cfg, scaled as scaled_cfg
from projects.continuous_cot import data, graphs, rows, thoughts as th, train
from projects.continuous_cot import analysis, evaluate as cot_eval
from projects.continuous_cot.graphs import Problem
from superpose.nn.testing import random_model

L, A, BAR, Q, R, EOS = data.LATENT, data.ANSWER, data.EDGE, data.QUESTION, data.ROOT, data.EOS

# 0 -> 1 -> 2 -> 3 (target), 0 -> 6 (a leaf off the path), 4 -> 5 (the negative, unreachable)
TOY = Problem(7, ((0, 1), (1, 2), (2, 3), (4, 5), (0, 6)), root=0, target=3, neg_target=5)
TOY_PROMPT = [EOS, 0, 1, BAR, 1, 2, BAR, 2, 3, BAR, 4, 5, BAR, 0, 6, Q, 3, 5, R, 0]


def test_curriculum_rows_token_exact():
  TOY.check()
  prompt = data.prompt_tokens(TOY)
  assert prompt == TOY_PROMPT and TOY.hops == 3
  expect = {
    0: (TOY_PROMPT + [1], 0),
    1: (TOY_PROMPT + [L, 2], 1),
    2: (TOY_PROMPT + [L, L, 3], 2),
    3: (TOY_PROMPT + [L, L, L, A, 3], 3),
  }
  for s, (tokens, count) in expect.items():
    got, n, col = rows.coconut_row(TOY, s, prompt, random.Random(s))
    assert (got, n, col) == (tokens, count, len(tokens) - 2)
  # Stage 0 supervises the root position; stage s the last latent; the final stage the [A] position.
  assert rows.coconut_row(TOY, 0, prompt, random.Random(0))[2] == len(prompt) - 1
  assert rows.coconut_row(TOY, 2, prompt, random.Random(0))[2] == len(prompt) + 1
  # Coconut-BFS: the stage-0 label is any node one hop from the root (1 or 6), the path label only
  # 1.
  assert {rows.coconut_row(TOY, 0, prompt, random.Random(i), "bfs")[0][-1] for i in range(40)} == {
    1,
    6,
  }
  assert {rows.coconut_row(TOY, 0, prompt, random.Random(i), "path")[0][-1] for i in range(40)} == {
    1
  }
  with pytest.raises(ValueError):
    rows.coconut_row(TOY, 4, prompt, random.Random(0))
  # Stages: min(scheduled, D); mixing draws from [0, min(scheduled, D)].
  assert [rows.coconut_stage(TOY, st, random.Random(0), 0.0) for st in range(6)] == [
    0,
    1,
    2,
    3,
    3,
    3,
  ]
  mixed = {rows.coconut_stage(TOY, 2, random.Random(i), 1.0) for i in range(60)}
  assert mixed == {0, 1, 2}
  # Baselines.
  assert rows.language_row(TOY, prompt, random.Random(0), "cot") == (
    TOY_PROMPT + [1, 2, 3, A, 3, EOS],
    19,
  )
  assert rows.language_row(TOY, prompt, random.Random(0), "nocot") == (TOY_PROMPT + [A, 3, EOS], 19)


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("prosqa_gen")
  train_set, used = data.generate_split(48, 0)
  valid_set, _ = data.generate_split(8, 1, exclude=used)
  rng = random.Random(0)
  for name, problems in (("train", train_set), ("valid", valid_set)):
    (out / f"{name}.json").write_text(json.dumps([data.to_record(p, rng) for p in problems]))
  return out


def _config(method, gen_dir, **train_overrides):
  c = scaled_cfg.get_config("smoke")
  c.cot.method = method
  c.cot.data_dir = str(gen_dir)
  c.train.update(dict(progress=False, **train_overrides))
  return c


@pytest.mark.parametrize("batching", train.BATCHINGS)
def test_loss_mask_and_schedule(gen_dir, batching):
  config = _config("coconut", gen_dir)
  config.cot.batching = batching
  cfg = config.to_dict()
  task = train.make_task(cfg).data
  for step in (1, 2, 3, 4, 5, 6):
    b = task.train_batch(step)
    width = task.T if batching == "padded" else task.width(task.step_rows(step))
    assert width <= task.T
    assert b["tokens"].shape == (8, width) and (b["weights"].sum(1) == 1).all()
    assert task.scheduled_stage(step) == step - 1  # smoke: one step per stage
    for r in range(8):
      col = int(np.flatnonzero(b["weights"][r])[0])
      start, n = int(b["latent_start"][r]), int(b["num_thoughts"][r])
      tokens = b["tokens"][r]
      assert (tokens[start : start + n] == L).all() and tokens[start - 1] not in (L,)
      label = int(b["targets"][r, col])
      assert label == tokens[col + 1]
      if tokens[col] == A:  # final stage: D thoughts, [A], the target
        assert col == start + n and n == int(sum(tokens == L))
      else:  # stage s = n: the label sits right after the s-th thought (or the root)
        assert col == start + n - 1 and label < graphs.MAX_NODES
      assert (tokens[col + 2 :] == EOS).all()
  # Step 1 is stage 0 for every row (no mixing possible): no thoughts, label a depth-1 node.
  assert (task.train_batch(1)["num_thoughts"] == 0).all()
  for method, extra in (("cot", 3), ("nocot", 3)):
    t2 = train.make_task(_config(method, gen_dir).to_dict()).data
    b = t2.train_batch(1)
    w = b["weights"].sum(1)
    if method == "nocot":
      assert (w == extra).all()
    else:
      assert (w >= 3 + extra).all()  # ≥ 3 path nodes, [A], target, <eos>
    for r in range(8):
      cols = np.flatnonzero(b["weights"][r])
      assert (np.diff(cols) == 1).all() and cols[0] == int(
        np.flatnonzero(b["tokens"][r] == R)[0]
      ) + 1
      assert b["targets"][r, cols[-1]] == EOS and b["targets"][r, cols[-3]] == A
      assert (
        b["targets"][r, cols[-2]] < graphs.MAX_NODES and b["weights"][r, cols[-1] + 1 :].sum() == 0
      )


def test_batches_pure_function_of_seed_and_step(gen_dir):
  cfg = _config("coconut", gen_dir).to_dict()
  a, b = train.make_task(cfg).data, train.make_task(cfg).data
  for step in (3, 1, 7):
    x, y = a.train_batch(step), b.train_batch(step)
    assert all((x[k] == y[k]).all() for k in x)
  # Two processes of a 2-process run fill the two halves of the global batch.
  halves = [a.train_batch(5, p, 2) for p in range(2)]
  whole = a.train_batch(5)
  assert all((np.concatenate([h[k] for h in halves]) == whole[k]).all() for k in whole)


def test_rowwise_thoughts_match_cached_forward():
  """The padded path's call (per-row counts, prefix P, the rest from latent_start + U) row by row
  equals the cached forward of that row alone with its own count."""
  import jax.numpy as jnp

  model = random_model(th.model_config("tiny", vocab_size=40, max_seq_len=32), seed=0, scale=0.3)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 40, (3, 20)).astype(np.int32)
  starts, counts, U, P = np.array([5, 9, 7], np.int32), np.array([2, 0, 1], np.int32), 2, 12
  got = np.asarray(
    th.cached_forward(
      model,
      jnp.asarray(tokens),
      jnp.asarray(starts),
      num_thoughts=U,
      num_thoughts_B=jnp.asarray(counts),
      prefix_len=P,
      rest_len=20 - P - U,
    ).logits_BTV
  )
  for b in range(
    3
  ):  # defined up to latent_start + U + (T - P - U): the row's prefix, thoughts and rest
    ref = th.forward_with_thoughts(
      model, tokens[b : b + 1], starts[b : b + 1], int(counts[b])
    ).logits_BTV
    end = starts[b] + 20 - P
    np.testing.assert_allclose(got[b, :end], np.asarray(ref)[0, :end], atol=2e-4, rtol=2e-4)


def _hashes(workdir):
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["batch_hash"] for r in rows if "batch_hash" in r}


@pytest.mark.parametrize("method", train.METHODS)
def test_smoke_run(method, gen_dir, tmp_path, check_sampling):
  result = train.run(
    _config(method, gen_dir, steps=2, eval_every=2, checkpoint_every=2), str(tmp_path)
  )
  if method == "nocot":  # launch.sample reads the run (a ProsQA prompt is space-separated symbols)
    check_sampling(
      tmp_path, data.VOCAB.decode(data.prompt_tokens(data.load(gen_dir / "valid.json")[0]))
    )
  assert (
    result.step == 2
    and 0.0 <= result.eval["eval/acc"] <= 1.0
    and np.isfinite(result.eval["eval/loss"])
  )
  assert ("eval/acc_fixed" in result.eval) == (method == "coconut")
  sel = json.loads((tmp_path / "selection.json").read_text())
  assert sel["step"] == 2 and sel["split"] == "generated validation" and sel["checkpoint"]
  # The released-split evaluator, given the generated validation problems, reproduces the
  # in-training numbers.
  scored = cot_eval.evaluate_run(tmp_path, data.load(gen_dir / "valid.json"))
  assert scored["method"] == method and scored["checkpoint"] == sel["checkpoint"]
  for metric, (k, n) in scored["counts"].items():
    assert n == 8 and k / n == pytest.approx(result.eval[f"eval/{metric}"], abs=1e-6)
  # The CLI on any ProsQA file (here the generated validation split) writes the same numbers as a
  # table.
  assert (
    cot_eval.main(
      [
        "--workdir",
        str(tmp_path),
        "--file",
        str(gen_dir / "valid.json"),
        "--out",
        str(tmp_path / "eval.md"),
      ]
    )
    == 0
  )
  k, n = scored["counts"]["acc"]
  assert f"{k / n:.1%}" in (tmp_path / "eval.md").read_text().split("\n")[4]
  # The signature analysis reads the same selected checkpoint (continuous thoughts only).
  if method == "coconut":
    problems = data.load(gen_dir / "valid.json")[:4]
    res = analysis.analyse(analysis.subject_from_run(tmp_path), problems, tmp_path / "sig", "gen")
    assert res["count"] == 4 and 0 <= res["accuracy"] <= 1
    assert res["inner"]["reachable"][1][2] > 0 and (tmp_path / "sig/gen.png").stat().st_size > 0
    assert (
      analysis.main(
        [
          "--workdir",
          str(tmp_path),
          "--file",
          str(gen_dir / "valid.json"),
          "--limit",
          "4",
          "--out",
          str(tmp_path / "sig2"),
        ]
      )
      == 0
    )
    assert (tmp_path / "sig2/valid.png").stat().st_size > 0 and "valid" in (
      tmp_path / "sig2/signature.md"
    ).read_text()
  else:
    with pytest.raises(ValueError, match="coconut"):
      analysis.subject_from_run(tmp_path)


def test_wilson_interval():
  lo, hi = cot_eval.wilson(5, 10)
  assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
  lo, hi = cot_eval.wilson(257, 257)
  assert hi == pytest.approx(1.0) and 0.985 < lo < 0.986


def test_resume_gives_same_batches(gen_dir, tmp_path):
  full, cut = tmp_path / "full", tmp_path / "cut"
  train.run(_config("coconut", gen_dir, steps=4, eval_every=0, checkpoint_every=2), str(full))
  train.run(_config("coconut", gen_dir, steps=2, eval_every=0, checkpoint_every=2), str(cut))
  result = train.run(
    _config("coconut", gen_dir, steps=4, eval_every=0, checkpoint_every=2), str(cut)
  )
  assert result.resumed_from == 2
  assert _hashes(full) == _hashes(cut) and sorted(_hashes(cut)) == [1, 2, 3, 4]


def test_configs():
  for v in scaled_cfg.VARIANTS:
    c = scaled_cfg.get_config(v)
    assert c.trainer == "projects.continuous_cot.train"
  from configs.continuous_cot import cpu, plateau

  for module in (cpu, plateau):
    for v in module.VARIANTS:
      c = config_lib.to_dict(module.get_config(v))
      config_lib.check(c)
  assert (
    plateau.get_config("base").cot.relabel is False
    and plateau.get_config("relabel_rope_set").cot.loss == "set"
  )
  assert cpu.get_config("cot").cot.method == "cot" and cpu.get_config("coconut").cot.reset_optimizer
  p = paper_cfg.get_config("coconut")
  assert (p.model.num_layers, p.model.num_heads, p.model.d_model) == (2, 8, 768)
  assert (p.optim.lr, p.train.batch_size, p.cot.epochs_per_stage, p.cot.uniform_prob) == (
    1e-4,
    256,
    25,
    0.1,
  )
  e = paper_cfg.get_config("eos_bfs_loss")  # the follow-up's recipe (spec §5.3)
  assert (
    e.train.batch_size,
    e.cot.stage0_epochs,
    e.cot.epochs_per_stage,
    e.cot.relabel,
    e.cot.reset_optimizer,
    e.cot.labels,
    e.cot.loss,
  ) == (512, 100, 50, True, True, "bfs", "set")
  assert e.train.steps * 512 // 15000 == 349  # 350 epochs
  with pytest.raises(Exception, match="data_dir"):
    c = scaled_cfg.get_config("smoke")
    c.cot.data_dir = "/nonexistent/prosqa"
    train.run(c, "/tmp/unused_cot_workdir")
