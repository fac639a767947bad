"""The compression study's loss sends a gradient to its learned W (the compiled weights are
constants), and at W = I — the exact optimum, loss 0 — the check reports W dead, as it should."""

import jax
import jax.numpy as jnp
import pytest

from configs.compiled import compress as compress_cfg
from projects.compiled import compress
from superpose.train import gradcheck


@pytest.fixture(scope="module")
def study():
  return compress.build_study("frac_prevs", list("abcx"), 5, token="x", max_inputs=120)


def test_compress_gradients_flow(study):
  t = compress_cfg.get_config("smoke").train
  _, _, evaluate = compress.make_functions(
    study, layer_weight=t.layer_weight, batch_size=t.batch_size
  )

  def loss_fn(params, split):  # the study's own loss (evaluate's), on one split, for one W
    return evaluate(params["W"][None], split)[1][0]

  W = compress.initial_W(jax.random.key(0), study.D, 3, t.init)
  report = gradcheck.check_loss(loss_fn, {"W": W}, "train", trainable=lambda path: True)
  gradcheck.assert_gradients_flow(report)
  assert report.trainable == 1
  at_optimum = gradcheck.check_loss(
    loss_fn, {"W": jnp.eye(study.D)}, "train", trainable=lambda path: True
  )
  assert at_optimum.dead == ["W"]
