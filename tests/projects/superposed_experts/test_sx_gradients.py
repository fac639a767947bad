"""Every trainable parameter of every superposed_experts method receives a gradient (and frozen
experts do not move) — superpose.train.gradcheck on real batches. The notebook's teacher-forced
graph without autoencoders is the counter-example: its α of every layer but the last never
trains."""

import pytest

from configs.superposed_experts import tiny
from projects.superposed_experts import train
from superpose.train import gradcheck


def _task(smoke, variant, **superposed):
  cfg, _, _ = smoke
  own = tiny.get_config(variant).to_dict()
  cfg = {
    **cfg,
    "optim": own["optim"],
    "superposed": {
      **cfg["superposed"],
      **{
        k: own["superposed"][k]
        for k in (
          "method",
          "train_graph",
          "router",
          "rank",
          "gate_hidden",
          "ae_causal",
          "mask_recon",
        )
      },
      **superposed,
    },
  }
  task = train.make_task(cfg)
  return task, task.spec.config  # as train.run: experts frozen, empty groups dropped


NO_AE = dict(ae_layers=(), train_ae_layers=())


@pytest.mark.parametrize(
  "variant, superposed",
  [
    ("smoke", {}),
    ("blend_only", NO_AE),
    ("router", {}),
    ("smoke_merge", NO_AE),
    ("smoke_trunk", NO_AE),
  ],
)
def test_every_trainable_parameter_gets_a_gradient(smoke, variant, superposed):
  task, cfg = _task(smoke, variant, **superposed)
  report = gradcheck.check_task(task, cfg)
  gradcheck.assert_gradients_flow(report)
  assert report.trainable > 0 and report.frozen > 0
  if task.spec.method != "trunk":  # one α (or λ) per layer: every element must have moved the loss
    assert task.spec.gradient_elementwise


def test_teacher_forced_blend_only_leaves_alpha_untrained(smoke):
  """The old α code (p1 §3.4 as the notebook trains it): the gradient check fails on it."""
  task, cfg = _task(smoke, "teacher_forced", **NO_AE)
  report = gradcheck.check_task(task, cfg)
  assert "blend/bias (some elements)" in report.dead
  with pytest.raises(AssertionError, match="blend/bias"):
    gradcheck.assert_gradients_flow(report)
