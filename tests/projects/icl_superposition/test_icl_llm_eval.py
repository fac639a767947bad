"""The any-model runner on the paper's four LLM families: a tiny random model through the Python API
and an HF-format GPT-2 checkpoint through the CLI; probabilities checked against full forwards."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projects.icl_superposition import llm_eval, tasks
from superpose.data import tokenizers
from superpose.nn import config as nn_config, hf_gpt2
from superpose.nn.testing import random_model


@pytest.fixture(scope="module")
def tiny_bytes_model():
  cfg = nn_config.gpt2(
    vocab_size=257, vocab_multiple=1, d_model=32, num_layers=2, num_heads=2, max_seq_len=512
  )
  return random_model(cfg, seed=3, scale=0.5)


@pytest.mark.parametrize("family", tasks.LLM_FAMILIES)
def test_families_on_a_tiny_random_model(family, icl_tables, tiny_bytes_model):
  enc = tokenizers.get_tokenizer("bytes").encode
  k = len(tasks.FAMILIES[family].tasks)
  res = llm_eval.evaluate_family(
    tiny_bytes_model, enc, family, 3, np.random.default_rng(0), n_examples=2 * k, batch_size=4
  )
  p = np.array([v["mean"] for v in res["p_task"].values()])
  logp = np.array(list(res["mean_log_p_task"].values()))
  assert (
    len(p) == k
    and np.all(p >= 0)
    and p.sum() < 1
    and np.all(np.isfinite(logp))
    and np.all(logp < 0)
  )
  assert res["p_other"]["mean"] == pytest.approx(1 - p.sum(), abs=1e-6)
  assert 0 <= res["r"]["mean"] <= k and res["kl"]["mean"] > 0
  assert res["fractions"] == pytest.approx([1 / k] * k, abs=0.13)


def test_answer_probability_is_a_full_forward_product(icl_tables, tiny_bytes_model):
  enc = tokenizers.get_tokenizer("bytes").encode
  prompt = tasks.family_prompt("AB", np.random.default_rng(1), n_examples=3)
  from projects.icl_superposition import scoring

  s = scoring.score(tiny_bytes_model, [prompt.text], [prompt.answers], enc, answer_terminator=False)
  for i, a in enumerate(prompt.answers):
    ids = enc(prompt.text + a)
    lp = jax.nn.log_softmax(tiny_bytes_model(jnp.asarray([ids])).logits_BTV[0])
    n = len(enc(prompt.text))
    want = sum(float(lp[t - 1, ids[t]]) for t in range(n, len(ids)))
    assert np.log(s.answer_prob[0, i]) == pytest.approx(want, rel=1e-3)


def test_cli_on_an_hf_checkpoint(icl_tables, tiny_bytes_model, tmp_path):
  from flax import nnx
  from superpose.train.state import pure_dict

  params = pure_dict(nnx.split(tiny_bytes_model)[1])
  hf_gpt2.save_hf_gpt2(tiny_bytes_model.cfg, params, tmp_path / "gpt2_tiny")
  rc = llm_eval.main(
    [
      "--hf-gpt2",
      str(tmp_path / "gpt2_tiny"),
      "--tokenizer",
      "bytes",
      "--family",
      "country",
      "--prompts",
      "4",
      "--examples",
      "8",
      "--fractions",
      "0.5,0.25,0.25",
      "--out",
      str(tmp_path / "o"),
    ]
  )
  assert rc == 0
  res = json.loads((tmp_path / "o/llm_country.json").read_text())
  assert (
    res["model"] == "gpt2_tiny" and res["fractions"] == [0.5, 0.25, 0.25] and res["prompts"] == 4
  )
  assert (tmp_path / "o/llm_country.png").exists() and "country_capital" in (
    tmp_path / "o/llm_country.md"
  ).read_text()
  assert (
    llm_eval.main(
      [
        "--hf-gpt2",
        str(tmp_path / "missing"),
        "--tokenizer",
        "bytes",
        "--family",
        "AB",
        "--out",
        str(tmp_path / "o2"),
      ]
    )
    == 2
  )
