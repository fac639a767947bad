"""ICL from-scratch training rows and loss masks, a smoke run, teacher-forced scoring against full
forwards, residual patching, the calibration, task-vector and task-mass CLIs on the smoke run."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.icl_superposition import mod_add as mod_add_cfg, retrieval as retrieval_cfg
from projects.icl_superposition import (
  calibrate,
  capacity,
  chars,
  scoring,
  task_mass,
  task_vectors,
  tasks,
  train,
)
from superpose.nn import config as nn_config
from superpose.nn.testing import random_model
from superpose.train import config as config_lib
from superpose.train.loader import load_model

NL = chars.VOCAB.id_of("\n")


def _cfg(variant="smoke", **icl):
  c = retrieval_cfg.get_config(variant)
  c.icl.update(icl)
  return config_lib.to_dict(c)


def test_rows_hold_one_task_and_mask_only_answers():
  task = train.make_task(_cfg()).data
  for g in range(20):
    name, (tokens, targets, weights) = task.train_row(g)
    k = int(name.removeprefix("retrieve"))
    assert tokens[0] == chars.VOCAB.bos_id and len(tokens) == task.T
    text = chars.VOCAB.decode(tokens)
    lines = text.split("\n")[:-1]
    assert len(lines) == task.n_examples
    for line in lines:
      x, y = line.split(">")
      assert len(x) == 8 and len(set(x)) == 8 and y == x[k]
    np.testing.assert_array_equal(
      targets[:-1][tokens[1:] != chars.VOCAB.pad_id], tokens[1:][tokens[1:] != chars.VOCAB.pad_id]
    )
    # weights: exactly the answer letters and their newlines (2 per line), as next-token targets
    hot = np.flatnonzero(weights)
    assert len(hot) == 2 * task.n_examples
    got = chars.VOCAB.decode(targets[hot])
    assert got == "".join(line.split(">")[1] + "\n" for line in lines)
    assert all(
      tokens[i] == chars.VOCAB.id_of(">") for i in hot[::2]
    )  # predicted from the separator
  assert task.train_row(3)[0] == train.make_task(_cfg()).data.train_row(3)[0]
  np.testing.assert_array_equal(
    task.train_row(3)[1][0], train.make_task(_cfg()).data.train_row(3)[1][0]
  )


def test_skewed_weights_and_bad_configs():
  task = train.make_task(_cfg(task_weights="skewed", n_examples=1)).data
  names = [task.train_row(g)[0] for g in range(2000)]
  first_half = np.mean([int(n[-1]) < 4 for n in names])
  assert 0.88 < first_half < 0.92  # 0.9 ± 2 standard errors (0.0067)
  assert len(set(names)) == 8
  with pytest.raises(config_lib.ConfigError, match="family"):
    train.make_spec(_cfg(family="country"))
  with pytest.raises(config_lib.ConfigError, match="max_seq_len"):
    train.make_spec(_cfg(n_examples=100))
  with pytest.raises(config_lib.ConfigError, match="task_weights"):
    train.make_spec(_cfg(task_weights="zipf"))


def test_configs():
  for v in retrieval_cfg.VARIANTS:
    c = retrieval_cfg.get_config(v)
    t = train.make_spec(config_lib.to_dict(c))
    assert t.T <= c.model.max_seq_len
  p = retrieval_cfg.get_config("paper")
  assert (p.model.num_layers, p.model.d_model, p.model.num_heads, p.model.d_ff) == (6, 384, 6, 1536)
  assert (p.icl.n_examples, p.train.batch_size, p.train.steps, p.optim.schedule) == (
    100,
    400,
    5000,
    "wsd",
  )
  assert retrieval_cfg.get_config("heads2").model.num_heads == 2
  wide = retrieval_cfg.get_config("skewed_wide")
  assert (
    wide.model.num_heads,
    wide.model.num_kv_heads,
    wide.model.head_dim,
    wide.model.d_model,
  ) == (3, 3, 64, 96)
  assert (
    wide.icl.n_examples,
    wide.icl.task_weights,
    wide.train.steps,
    wide.optim.warmup_steps,
  ) == (12, "skewed", 24000, 400)
  assert "skewed_wide" not in mod_add_cfg.VARIANTS
  with pytest.raises(ValueError, match="retrieval's recipe"):
    mod_add_cfg.get_config("skewed_wide")
  ft = mod_add_cfg.get_config("uniform_from_skewed")
  assert (ft.icl.task_weights, ft.train.init_from, ft.train.steps) == (
    "uniform",
    "workdirs/icl/mod_add_skewed",
    600,
  )
  assert retrieval_cfg.get_config("uniform_from_skewed").train.init_from == "workdirs/icl/skewed"
  short, long_ = mod_add_cfg.get_config("skewed_short"), mod_add_cfg.get_config("skewed_long")
  assert (
    short.icl.n_examples,
    short.icl.task_weights,
    short.train.steps,
    short.train.init_from,
  ) == (20, "skewed", 6000, "")
  assert (long_.icl.n_examples, long_.train.steps, long_.train.init_from) == (
    100,
    400,
    "workdirs/icl/mod_add_skewed_short",
  )
  assert train.make_spec(config_lib.to_dict(short)).T == 88
  m = mod_add_cfg.get_config("uniform")
  assert (m.icl.family, m.icl.n_examples, m.icl.test_pair, m.optim.eps) == (
    "mod_add",
    100,
    "random",
    1e-8,
  )
  assert train.make_spec(config_lib.to_dict(m)).T == 408
  # independent keys (big_vision style); the old variant names are aliases of them
  assert mod_add_cfg.get_config("weights=skewed,stage=short").to_dict() == short.to_dict()
  assert retrieval_cfg.get_config("weights=skewed,wide").to_dict() == wide.to_dict()
  ft_keys = retrieval_cfg.get_config("stage=finetune")
  assert ft_keys.to_dict() == retrieval_cfg.get_config("uniform_from_skewed").to_dict()
  assert retrieval_cfg.get_config("").to_dict() == retrieval_cfg.get_config("uniform").to_dict()
  assert retrieval_cfg.parse_arg("skewed_short, heads=3,smoke") == dict(
    weights="skewed", stage="short", heads=3, wide=False, recipe="scaled", smoke=True
  )
  k = mod_add_cfg.get_config("weights=skewed,stage=long,heads=2")
  assert (k.icl.task_weights, k.model.num_heads, k.model.num_kv_heads, k.train.init_from) == (
    "skewed",
    2,
    2,
    "workdirs/icl/mod_add_skewed_short",
  )
  for bad, match in [
    ("weight=skewed", "unknown key 'weight'.*weights, stage"),
    ("heads=4", r"heads: 1 \| 2 \| 3 \| 6"),
    ("weights=zipf", r"weights: uniform \| skewed"),
    ("stage", "needs a value"),
    ("heads", "needs a value"),
    ("skewed,weights=uniform", "given twice"),
    ("wide,heads=2", "wide is its own recipe"),
    ("recipe=paper,stage=short", "stage=full"),
  ]:
    with pytest.raises(ValueError, match=match):
      retrieval_cfg.get_config(bad)
  with pytest.raises(ValueError, match="retrieval's recipe"):
    mod_add_cfg.get_config("weights=skewed,wide")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("icl_smoke")
  result = train.run(retrieval_cfg.get_config("smoke"), str(workdir))
  return workdir, result


def test_smoke_run(smoke_run, check_sampling):
  workdir, result = smoke_run
  assert result.step == 4
  assert set(result.eval) >= {"eval/loss", "eval/acc", "eval/acc_late"}
  assert np.isfinite(result.eval["eval/loss"]) and 0 <= result.eval["eval/acc"] <= 1
  run = load_model(workdir)
  assert run.config["icl"]["n_examples"] == 6 and run.model.cfg.num_layers == 2
  check_sampling(workdir, "abcdefgh>c\nhgfedcba>")


def _tiny_model():
  cfg = nn_config.llama(
    vocab_size=chars.VOCAB.vocab_size,
    vocab_multiple=8,
    d_model=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    d_ff=64,
    max_seq_len=128,
  )
  return random_model(cfg, seed=1, scale=1.0)


def _full_logp(model, ids, start):
  lp = jax.nn.log_softmax(model(jnp.asarray([ids])).logits_BTV[0])
  return sum(float(lp[t - 1, ids[t]]) for t in range(start, len(ids)))


def test_scoring_equals_full_forward_and_counts_r():
  model = _tiny_model()
  rng = np.random.default_rng(0)
  prompts = [tasks.mixed_prompt("retrieve6", "retrieve2", n, 0.5, rng) for n in (2, 3, 5)]
  answers = [p.answers + ("xy",) for p in prompts]  # a 2-character answer too
  s = scoring.score(
    model,
    [p.text for p in prompts],
    answers,
    chars.VOCAB.encode,
    prefix=[chars.VOCAB.bos_id],
    batch_size=2,
    top_first=3,
    max_new=4,
  )
  for i, p in enumerate(prompts):
    start = 1 + len(p.text)
    for k, a in enumerate(answers[i]):
      ids = [chars.VOCAB.bos_id] + chars.VOCAB.encode(p.text + a + "\n")
      assert s.answer_prob[i, k] == pytest.approx(np.exp(_full_logp(model, ids, start)), rel=1e-4)
    # greedy candidates: their probabilities are full-forward products too, and r follows its
    # definition
    for out, prob in s.top_outputs[i]:
      assert out[-1] == NL
      ids = [chars.VOCAB.bos_id] + chars.VOCAB.encode(p.text) + list(out)
      assert prob == pytest.approx(
        np.exp(_full_logp(model, ids, start)), rel=1e-3
      )  # token-by-token decode
    pool = sorted(
      {
        **{tuple(chars.VOCAB.encode(a + "\n")): q for a, q in zip(answers[i], s.answer_prob[i])},
        **dict(s.top_outputs[i]),
      }.values(),
      reverse=True,
    )
    assert s.k_prob[i] == pytest.approx(pool[2]) and s.r[i] == int(
      (s.answer_prob[i] >= s.k_prob[i]).sum()
    )
  assert np.all(s.other == 1 - s.answer_prob.sum(1))
  with pytest.raises(ValueError, match="same number"):
    scoring.score(model, ["ab>", "cd>"], [("a",), ("b", "c")], chars.VOCAB.encode)


def test_patching_and_hidden_states():
  model = _tiny_model()
  texts, answers = ["abcdefgh>", "ijklmnop>"], [("c", "g"), ("k", "o")]
  enc, bos = chars.VOCAB.encode, [chars.VOCAB.bos_id]
  s = scoring.score(model, texts, answers, enc, prefix=bos, want_hidden=True)
  for i, t in enumerate(texts):
    out = model(jnp.asarray([bos + enc(t)]), return_hidden=True)
    np.testing.assert_allclose(
      s.last_hidden[:, i], np.asarray(out.hidden[:, 0, -1]), rtol=1e-3, atol=1e-3
    )
  v = np.random.default_rng(0).normal(size=32).astype(np.float32)
  patched = scoring.score(model, texts, answers, enc, prefix=bos, patch_layer=0, patch=v)
  for i, t in enumerate(texts):
    ids = bos + enc(t)

    def hook(index, x):
      return x.at[:, len(ids) - 1].set(jnp.where(index == 0, v, x[:, len(ids) - 1]))

    for k, a in enumerate(answers[i]):
      full = ids + enc(a + "\n")
      lp = jax.nn.log_softmax(model(jnp.asarray([full]), hook=hook).logits_BTV[0])
      want = float(lp[len(ids) - 1, full[len(ids)]] + lp[len(ids), full[len(ids) + 1]])
      assert np.log(patched.answer_prob[i, k]) == pytest.approx(want, rel=1e-3, abs=1e-3)
      assert abs(np.log(patched.answer_prob[i, k]) - np.log(s.answer_prob[i, k])) > 1e-2


def test_kl_target_model():
  kl = scoring.kl_target_model(
    np.array([[0.3, 0.7], [1.0, 0.0]]), np.log(np.array([[0.3, 0.7], [0.5, 0.2]]))
  )
  assert kl[0] == pytest.approx(0.0, abs=1e-12) and kl[1] == pytest.approx(np.log(2))


def test_mixed_prompts_fractions():
  rng = np.random.default_rng(0)
  ps = calibrate.mixed_prompts("retrieve2", "retrieve6", 40, 0.3, 300, rng)
  frac = np.mean([np.mean(np.asarray(p.labels) == 0) for p in ps])
  assert abs(frac - 0.3) < 0.02 and len({sum(np.asarray(p.labels) == 0) for p in ps}) > 3
  for p in ps[:20]:
    assert p.tasks == ("retrieve2", "retrieve6") and p.answers == (p.query[2], p.query[6])
    for (x, y), lab in zip(p.examples, p.labels):
      assert y == x[2 if lab == 0 else 6]
  exact = calibrate.mixed_prompts("retrieve2", "retrieve6", 40, 0.3, 5, rng, mixing="exact")
  assert all(sum(np.asarray(p.labels) == 0) == 12 for p in exact)


def test_random_pairs_for_mod_add():
  rng = np.random.default_rng(1)
  ps = calibrate.mixed_prompts("random", "random", 20, 0.5, 50, rng, family="mod_add")
  assert len({p.tasks for p in ps}) > 10
  for p in ps:
    k = [int(t.removeprefix("plus")) for t in p.tasks]
    assert k[0] != k[1] and p.answers == tuple(str((int(p.query) + j) % 10) for j in k)
    for (x, y), lab in zip(p.examples, p.labels):
      assert int(y) == (int(x) + k[lab]) % 10
  assert calibrate.evaluation_pair(config_lib.to_dict(mod_add_cfg.get_config("smoke"))) == (
    "random",
    "random",
  )


def test_reference_curve_and_compare(shared_data):
  ref = calibrate.reference_curve(
    "eval_copy_6_384_6_mix_1",
    shared_data / "icl_tables/from_scratch_reference/icl_pretraining_calibration_curves.csv",
  )
  assert sorted(ref) == list(calibrate.MIXING)
  assert ref[0.3][0] == pytest.approx(0.132882)
  rows = [
    {"d": d, "p_task0": {"mean": ref[d][0] + 0.01}, "p_task1": {"mean": ref[d][1] - 0.03}}
    for d in ref
  ]
  cmp_ = calibrate.compare(rows, ref)
  assert cmp_["mean_abs_delta"] == pytest.approx(0.02) and cmp_["points"] == 11
  assert "mean_abs_delta_ci95" not in cmp_  # summary rows only: no per-prompt samples


def _noisy_rows(rng, ref, gap, n=300, seeds=1):
  """Curves whose prompts commit to one task (0/1 samples) with mean P_ref + gap, ``seeds`` groups
  each."""
  rows = []
  for d in calibrate.MIXING:
    p = float(np.clip(ref[d][0] + gap, 0, 1))
    groups = []
    for _ in range(seeds):
      x = (rng.random(n) < p).astype(float)
      groups.append(np.stack([x, 1 - x], 1))
    m = np.concatenate(groups).mean(0)
    rows.append(
      {
        "d": d,
        "p_task0": {"mean": m[0]},
        "p_task1": {"mean": m[1]},
        "samples": groups if seeds > 1 else groups[0],
      }
    )
  return rows


def test_compare_bootstrap_interval():
  """With every mean 0.1 above its reference, |Δ| keeps its sign, so the mean |Δ| is a plain mean of
  22 independent sample means: its 95 % interval is ±1.96·sqrt(Σ var_i / n) / 22 around 0.1."""
  rng = np.random.default_rng(0)
  ref = {d: (0.2, 0.5, 0.3) for d in calibrate.MIXING}
  n, sd = 400, 0.2
  rows = []
  for d in calibrate.MIXING:
    x = np.stack([rng.normal(0.3, sd, n), rng.normal(0.6, sd, n)], 1)
    rows.append(
      {
        "d": d,
        "p_task0": {"mean": x[:, 0].mean()},
        "p_task1": {"mean": x[:, 1].mean()},
        "samples": x,
      }
    )
  cmp_ = calibrate.compare(rows, ref, draws=4000, ref_prompts=None)
  lo, hi = cmp_["mean_abs_delta_ci95"]
  half = 1.96 * np.sqrt(22 * sd**2 / n) / 22
  assert lo < cmp_["mean_abs_delta"] < hi
  assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
  assert cmp_["mean_abs_delta"] == pytest.approx(0.1, abs=3 * half)
  assert cmp_["rms_gap_ci95"][0] < 0.1 < cmp_["rms_gap_ci95"][1]
  assert cmp_["noise_rms"] == pytest.approx(sd / np.sqrt(n), rel=0.1)
  rows0 = [
    dict(r, samples=np.tile(r["samples"].mean(0), (n, 1))) for r in rows
  ]  # no spread: a point interval
  assert calibrate.compare(rows0, ref, ref_prompts=None)["mean_abs_delta_ci95"] == pytest.approx(
    [cmp_["mean_abs_delta"]] * 2
  )
  # the reference's own sampling noise widens the interval
  lo_r, hi_r = calibrate.compare(rows, ref, draws=4000)["mean_abs_delta_ci95"]
  assert hi_r - lo_r > (hi - lo) * 1.05


def test_compare_gap_interval_coverage():
  """Committing predictors (0/1 per prompt) whose mean equals the reference: the percentile interval
  of the mean |Δ| excludes the true 0 every time (|·| biases it up), the noise-corrected RMS gap's
  interval reaches 0 in ≥ 90 % of replicates; with a true gap of 0.08 at every point its interval
  covers 0.08 in ≥ 80 % and excludes 0. Two training seeds work the same way."""
  ref = {d: (0.1 + 0.8 * d, 0.9 - 0.8 * d, 0.0) for d in calibrate.MIXING}
  zero, biased, covered, excluded = 0, 0, 0, 0
  reps = 30
  for rep in range(reps):
    rng = np.random.default_rng(rep)
    c = calibrate.compare(
      _noisy_rows(rng, ref, 0.0, seeds=1 + rep % 2), ref, draws=400, seed=rep, ref_prompts=None
    )
    zero += c["rms_gap_ci95"][0] == 0.0
    biased += c["mean_abs_delta_ci95"][0] > 0.0
    g = calibrate.compare(_noisy_rows(rng, ref, -0.08), ref, draws=400, seed=rep, ref_prompts=None)
    covered += g["rms_gap_ci95"][0] <= 0.08 <= g["rms_gap_ci95"][1]
    excluded += g["rms_gap_ci95"][0] > 0
  assert biased == reps and zero >= 0.9 * reps
  assert covered >= 0.8 * reps and excluded == reps


def test_calibrate_and_task_vector_clis(smoke_run, shared_data, tmp_path, monkeypatch):
  workdir, _ = smoke_run
  monkeypatch.setattr(calibrate, "MIXING", (0.0, 0.5, 1.0))
  monkeypatch.setattr(task_vectors, "LAMBDAS", np.linspace(0, 1, 3))
  monkeypatch.setattr(task_vectors, "ICL_LAMBDAS", np.linspace(0, 1, 2))
  rc = calibrate.main(
    [
      "--workdir",
      str(workdir),
      "--out",
      str(tmp_path / "cal"),
      "--prompts",
      "6",
      "--conditions",
      "standard,inside",
      "--tables-dir",
      str(shared_data / "icl_tables"),
    ]
  )
  assert rc == 0
  res = json.loads((tmp_path / "cal/calibration.json").read_text())[workdir.name]
  assert res["reference"] == "eval_copy_6_384_6_mix_1" and set(res["conditions"]) == {
    "standard",
    "inside",
  }
  assert res["lines"] == {"standard": 6, "inside": 5}
  for cond in res["conditions"].values():
    assert set(cond) == {"model", "diagonal", "soft oracle", "one-hot oracle", "uniform guess"}
    rows = cond["model"]["rows"]
    assert [r["d"] for r in rows] == [0.0, 0.5, 1.0]
    for r in rows:
      assert r["other"] == pytest.approx(1 - r["p_task0"]["mean"] - r["p_task1"]["mean"], abs=1e-6)
    soft = cond["soft oracle"]["per_prompt"]
    assert soft["kl"]["mean"] == pytest.approx(0, abs=1e-12) and soft["tv"][
      "mean"
    ] == pytest.approx(0, abs=1e-12)
    assert cond["one-hot oracle"]["per_prompt"]["r"]["mean"] == 1.0
  assert (tmp_path / f"cal/calibration_{workdir.name}_inside.png").stat().st_size > 0
  assert "one-hot oracle" in (tmp_path / "cal/calibration.md").read_text()
  calibrate.overlay({"a": res, "b": res}, tmp_path / "runs.png")
  assert (tmp_path / "runs.png").read_bytes()[:4] == b"\x89PNG"
  assert (
    task_vectors.main(["--workdir", str(workdir), "--out", str(tmp_path / "tv"), "--prompts", "4"])
    == 0
  )
  tv = json.loads((tmp_path / "tv/task_vectors.json").read_text())[workdir.name]
  assert len(tv["by_layer"]) == 2 and len(tv["interpolation"]) == 3
  assert tv["best_layer"] == max(tv["by_layer"], key=lambda r: r["move"])["layer"]
  for row in tv[
    "by_layer"
  ]:  # the move is P(answer | own vector) − P(answer | no patch), averaged over the pair
    want = (
      row["p_task0_with_v0"]
      - tv["zero_shot"]["p_task0"]
      + row["p_task1_with_v1"]
      - tv["zero_shot"]["p_task1"]
    ) / 2
    assert row["move"] == pytest.approx(want, abs=1e-6) and -1 <= row["cosine"] <= 1
    own_minus_other = (
      row["p_task0_with_v0"]
      - row["p_task0_with_v1"]
      + row["p_task1_with_v1"]
      - row["p_task1_with_v0"]
    ) / 2
    assert row["specific"] == pytest.approx(own_minus_other, abs=1e-6)
  assert calibrate.main(["--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
  assert (
    task_mass.main(
      [
        "--workdir",
        str(workdir),
        "--pairs",
        "retrieve2,retrieve6",
        "--out",
        str(tmp_path / "tm"),
        "--prompts",
        "4",
      ]
    )
    == 0
  )
  tm = json.loads((tmp_path / "tm/task_mass.json").read_text())[workdir.name]["pairs"][
    "retrieve2,retrieve6"
  ]
  m = np.asarray(tm["mass"])
  assert m.shape == (3, 8) and (m >= 0).all() and (m.sum(1) <= 1 + 1e-5).all()
  # the two pair columns are the calibration scores of the same prompts
  model = load_model(workdir).model
  for j, d in enumerate(calibrate.MIXING):
    ps = calibrate.mixed_prompts(
      "retrieve2", "retrieve6", 6, d, 4, np.random.default_rng([0, j, 53]), mixing="exact"
    )
    s = scoring.score(
      model,
      [p.text for p in ps],
      [p.answers for p in ps],
      chars.VOCAB.encode,
      prefix=[chars.VOCAB.bos_id],
      batch_size=4,
    )
    np.testing.assert_allclose(m[j, [2, 6]], s.answer_prob.mean(0), rtol=1e-4, atol=1e-6)
  assert (
    task_mass.main(
      ["--workdir", str(workdir), "--pairs", "retrieve2", "--out", str(tmp_path / "tm")]
    )
    == 2
  )
  rc = capacity.main(
    [
      "--workdir",
      f"two={workdir},{workdir}",
      "--out",
      str(tmp_path / "cap"),
      "--prompts",
      "4",
      "--ks",
      "1,2,3",
    ]
  )
  assert rc == 0
  cap = json.loads((tmp_path / "cap/capacity.json").read_text())
  assert [(c["k"], c["shares"]) for c in cap["conditions"]] == [
    (1, "uniform"),
    (2, "uniform"),
    (2, "dirichlet"),
    (3, "uniform"),
    (3, "dirichlet"),
  ]
  for c in cap["conditions"]:
    e = c["models"]["two"]
    assert (
      0 <= e["r"]["mean"] <= c["k"]
      and len(e["p_answers"]) == c["k"]
      and e["kl"]["per_seed"][0] == pytest.approx(e["kl"]["per_seed"][1])
    )  # the same run twice: the same prompts
    assert c["soft oracle"]["tv"]["mean"] == pytest.approx(0, abs=1e-12)
    assert c["uniform guess"]["other"]["mean"] == pytest.approx(
      1 - c["k"] / 8
    )  # retrieval: 8 outputs
  assert (
    cap["models"]["two"]["parameters"] > 0 and (tmp_path / "cap/capacity.png").stat().st_size > 0
  )
  assert (
    capacity.main(["--workdir", str(workdir), "--out", str(tmp_path / "cap"), "--shares", "zipf"])
    == 2
  )
  # a later size joins the same table: the same prompts, so its numbers equal the first model's
  assert (
    capacity.main(
      [
        "--workdir",
        f"again={workdir}",
        "--out",
        str(tmp_path / "cap"),
        "--prompts",
        "4",
        "--ks",
        "1,2,3",
        "--add",
      ]
    )
    == 0
  )
  cap = json.loads((tmp_path / "cap/capacity.json").read_text())
  assert set(cap["models"]) == {"two", "again"}
  for c in cap["conditions"]:
    assert c["models"]["again"]["tv"]["mean"] == pytest.approx(c["models"]["two"]["tv"]["mean"])
  assert (
    capacity.main(
      [
        "--workdir",
        f"again={workdir}",
        "--out",
        str(tmp_path / "cap"),
        "--prompts",
        "5",
        "--ks",
        "1,2,3",
        "--add",
      ]
    )
    == 2
  )


def test_task_mass_offsets():
  res = {"tasks": [f"plus{k}" for k in range(10)], "d": [1.0, 0.5, 0.0], "mass": np.zeros((3, 10))}
  res["mass"][0, 2] = res["mass"][1, 9] = res["mass"][1, 1] = res["mass"][2, 8] = 0.5
  o = task_mass.offsets(res, "plus2", "plus8")  # the shorter arc from 8 to 2 passes 9, 0, 1
  assert [r["interpolated"] for r in o] == pytest.approx([2.0, 0.0, 8.0])
  assert [r["mean_offset"] for r in o] == pytest.approx([2.0, 0.0, 8.0], abs=1e-9)
  assert o[0]["argmax_task"] == "plus2" and o[2]["argmax_task"] == "plus8"


def test_task_mass_copy_source(monkeypatch):
  """A scorer that copies the answer of the LAST in-context line with the query's input agrees with
  'last' on every prompt, and with the prompt majority less often; the retrieval family (fresh
  queries) is refused."""

  def fake_score(model, texts, answers, encode, **kw):
    probs = []
    for text, ans in zip(texts, answers):
      *lines, query = text.split("\n")
      x = query[:-1]
      last = [ln[2] for ln in lines if ln[0] == x][-1]
      probs.append([float(last == a) for a in ans])
    return types.SimpleNamespace(answer_prob=np.asarray(probs))

  monkeypatch.setattr(task_mass.scoring, "score", fake_score)
  config = {"icl": {"family": "mod_add", "n_examples": 30}}
  rows = task_mass.copy_source(None, config, "plus2", "plus6", n_prompts=60)
  assert [r["d"] for r in rows] == pytest.approx([0.1 * i for i in range(1, 10)])
  assert all(r["last"] == 1.0 for r in rows)
  assert np.mean([r["prompt_majority"] for r in rows if r["prompt_majority"] is not None]) < 0.9
  assert all(0 <= r["first"] <= 1 and r["mean_matches"] >= 1 for r in rows)
  with pytest.raises(ValueError, match="mod_add"):
    task_mass.copy_source(
      None, {"icl": {"family": "retrieval", "n_examples": 6}}, "retrieve2", "retrieve6", 4
    )
