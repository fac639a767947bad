"""The hand-set 2-layer construction: 100% on samples of the released splits, thoughts =
superposition."""

import numpy as np
import pytest

from projects.continuous_cot import construction, data

LENGTH = 184  # one padded shape for every call below: one compilation


@pytest.fixture(scope="module")
def model():
  return construction.build(construction.Construction())


def _run(model, problems, layout="code"):
  tokens, root_pos, counts = construction.batch(problems, LENGTH, layout)
  return construction.run_thoughts(model, tokens, root_pos, counts)


@pytest.mark.parametrize("split", ["graph4", "graph4_shuffled", "valid"])
def test_construction_is_exact_on_released_samples(model, released, split):
  problems = released[split][:50]
  thoughts, answers = _run(model, problems)
  assert [int(a) for a in answers] == [p.answer() for p in problems]  # 100%
  d = construction.Construction().d_model
  for i, p in enumerate(problems[:10]):
    for step in range(1, p.hops + 1):
      np.testing.assert_allclose(
        thoughts[i, step - 1], construction.ideal_thought(p, step, d), atol=1e-5
      )


def test_theory_layout_and_weights_do_not_depend_on_the_graph(released):
  c = construction.Construction(layout="theory")
  problems = released["graph4_shuffled"][50:100]
  thoughts, answers = _run(construction.build(c), problems, "theory")
  assert [int(a) for a in answers] == [p.answer() for p in problems]


def test_thoughts_are_needed(model, released):
  """With fewer thoughts than hops the target is not yet in the superposition: the readout fails."""
  problems = [p for p in released["graph4"][:60] if p.hops == 4][:20]
  tokens = np.full((len(problems), LENGTH), data.EOS, np.int32)
  root_pos = np.zeros(len(problems), np.int32)
  for i, p in enumerate(problems):
    seq = data.question_tokens(p, 1)
    tokens[i, : len(seq)], root_pos[i] = seq, len(seq) - 3
  _, answers = construction.run_thoughts(model, tokens, root_pos, np.ones(len(problems), np.int32))
  assert sum(int(a) == p.answer() for a, p in zip(answers, problems)) < len(problems)


def test_chooser_constants_and_config():
  c = construction.Construction()
  eta, xi = construction.chooser_constants(c)
  assert eta > 0 and xi >= 4  # ξ = max 2P / (P/2 − ⟨p0,pj⟩) ≥ 2P / P
  cfg = c.config()
  assert (cfg.norm, cfg.mlp_residual, cfg.activation, cfg.attn_scale, cfg.positions) == (
    "l2",
    False,
    "step",
    "one",
    "sinusoidal",
  )
  assert cfg.vocab_size == 40 and cfg.d_model == 3 * 40 + c.position_dims
