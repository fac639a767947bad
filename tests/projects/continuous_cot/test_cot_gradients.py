"""Every parameter of the continuous-CoT trainer gets a gradient, for each method its scaled config
offers (Coconut with path and BFS labels, CoT, No-CoT), on generated problems at the smoke size."""

import pytest

from configs.continuous_cot import cpu as cpu_cfg, scaled as scaled_cfg
from projects.continuous_cot import data, train
from superpose.train import gradcheck


@pytest.fixture(scope="module")
def problems():
  # 3 hops only: U = 3 thought slots, one unrolled cached step fewer to compile than with 4-hop
  # problems.
  train_set, used = data.generate_split(16, 0, hops=(3,))
  valid_set, _ = data.generate_split(4, 1, exclude=used, hops=(3,))
  return train_set, valid_set


@pytest.mark.parametrize("variant", [v for v in scaled_cfg.VARIANTS if v != "smoke"])
def test_cot_gradients_flow(variant, problems):
  c = scaled_cfg.get_config(variant)
  smoke = scaled_cfg.get_config("smoke")
  c.model = smoke.model
  c.train.batch_size = smoke.train.batch_size
  c.cot.steps_per_stage = 1  # Coconut: continuous thoughts from step 2 on, so the check sees them
  cfg = c.to_dict()
  task = train.make_task(cfg, train=problems[0], valid=problems[1])
  assert task.spec.method == {"coconut_bfs": "coconut"}.get(variant, variant)
  if (
    task.spec.method == "coconut"
  ):  # the gradient batch (2, or 3 after a warmup from lr 0) has thoughts
    assert all(task.data.train_batch(step)["num_thoughts"].max() > 0 for step in (2, 3))
  report = gradcheck.check_task(task, cfg)
  gradcheck.assert_gradients_flow(report)
  assert report.trainable > 0 and report.frozen == 0


def test_cpu_recipe_gradients_flow(problems):
  """The CPU recipe's Coconut with the set-valued loss, RoPE, relabelled rows and an optimizer
  reset."""
  c = cpu_cfg.get_config("coconut_set")
  smoke = scaled_cfg.get_config("smoke")
  c.model = smoke.model
  c.model.positions = "rope"
  c.train.batch_size = smoke.train.batch_size
  c.cot.update(dict(steps_per_stage=1, stage0_steps=1))
  cfg = c.to_dict()
  task = train.make_task(cfg, train=problems[0], valid=problems[1])
  assert task.spec.loss_kind == "set" and task.spec.relabel
  assert all(task.data.train_batch(s)["num_thoughts"].max() > 0 for s in (2, 3))
  report = gradcheck.check_task(task, cfg)
  gradcheck.assert_gradients_flow(report)
