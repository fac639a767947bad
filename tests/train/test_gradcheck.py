"""The gradient-flow check: disconnected leaves are dead, frozen leaves stay put (or are caught
moving), a zero-initialised output layer is alive after the first update, check_loss on a plain
function, and the language-model trainer passes it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.lm import tiny
from superpose.train import config as config_lib, gradcheck, lm, optim
from superpose.train.task import Task


class Tiny(nnx.Module):
  """y = tanh(x A) B + x F: ``b`` may start at zero (a LoRA-B-like output layer), ``frozen`` (F) is
  frozen by the configs below; ``times_zero`` reaches the loss multiplied by 0 and ``unused`` never
  does."""

  def __init__(self, zero_out: bool = False):
    rng = np.random.default_rng(0)
    self.a = nnx.Param(jnp.asarray(rng.normal(size=(4, 8)), jnp.float32))
    self.b = nnx.Param(
      jnp.zeros((8, 1)) if zero_out else jnp.asarray(rng.normal(size=(8, 1)), jnp.float32)
    )
    self.frozen = nnx.Param(jnp.ones((4, 1)))
    self.times_zero = nnx.Param(jnp.ones((3,)))
    self.unused = nnx.Param(jnp.ones((2,)))

  def __call__(self, x_BX):
    return jnp.tanh(x_BX @ self.a) @ self.b + x_BX @ self.frozen + 0.0 * self.times_zero.sum()


class TinySpecAndData:
  """A task's spec and data in one object, as little of them as check_task reads."""

  def __init__(self, zero_out: bool = False, poison_step: int = 0):
    self.zero_out, self.poison_step = zero_out, poison_step

  def make_model(self):
    return Tiny(self.zero_out)

  def train_loss(self, model, batch):
    err_B = model(batch["x"])[:, 0] - batch["y"]
    return jnp.mean(err_B**2), {}

  def train_batch(self, step, process_index=0, process_count=1):
    x = np.random.default_rng(step).normal(size=(8, 4)).astype(np.float32)
    y = np.sin(x).sum(1) if step != self.poison_step else np.full(8, np.nan, np.float32)
    return {"x": x, "y": y}


def _tiny(**kw) -> Task:
  both = TinySpecAndData(**kw)
  return Task(both, both)


def _cfg(**optim_cfg):
  return {
    "optim": {"lr": 1e-2, "schedule": "constant", "frozen": ("frozen",), **optim_cfg},
    "train": {"steps": 10},
  }


def test_disconnected_leaves_are_dead_and_frozen_leaves_stay():
  report = gradcheck.check_task(_tiny(), _cfg())
  assert report.dead == ["times_zero", "unused"]
  assert report.moved_frozen == [] and report.frozen_with_grad == ["frozen"]
  assert (report.trainable, report.frozen) == (4, 1)
  assert "dead 2 (times_zero, unused)" in str(report)
  with pytest.raises(AssertionError, match=r"without a gradient .*times_zero, unused"):
    gradcheck.assert_gradients_flow(report)
  # Without the frozen pattern, the leaf is trainable and alive; nothing is frozen.
  report = gradcheck.check_task(_tiny(), _cfg(frozen=()))
  assert report.dead == ["times_zero", "unused"] and (report.trainable, report.frozen) == (5, 0)


def test_zero_initialised_output_layer_is_alive_after_the_first_step():
  # At the initialisation b = 0, so a's gradient is exactly zero: what the first update is there
  # for.
  assert gradcheck.check_task(_tiny(zero_out=True), _cfg(), steps=0).dead == [
    "a",
    "times_zero",
    "unused",
  ]
  assert gradcheck.check_task(_tiny(zero_out=True), _cfg(), steps=1).dead == [
    "times_zero",
    "unused",
  ]
  # A warmup from lr 0 makes step 1 a no-op; the check then runs one more step.
  warm = _cfg(schedule="warmup_cosine", warmup_steps=5)
  assert optim.make_optimizer(warm["optim"], {"a": jnp.zeros(1)}, 10)[1](0) == 0.0
  assert gradcheck.check_task(_tiny(zero_out=True), warm, steps=1).dead == ["times_zero", "unused"]


def test_a_frozen_leaf_that_moves_is_reported(monkeypatch):
  # An optimizer that ignores optim.frozen (plain SGD on everything) moves the frozen leaf.
  monkeypatch.setattr(
    optim, "make_optimizer", lambda cfg, params, steps: (optax.sgd(0.1), lambda s: 0.1)
  )
  report = gradcheck.check_task(_tiny(), _cfg())
  assert report.moved_frozen == ["frozen"]
  with pytest.raises(
    AssertionError, match="frozen leaves changed by the optimizer: 1 \\(frozen\\)"
  ):
    gradcheck.assert_gradients_flow(report)


def test_non_finite_training_step_raises_and_a_non_finite_gradient_is_dead():
  with pytest.raises(FloatingPointError, match="at step 1"):
    gradcheck.check_task(_tiny(poison_step=1), _cfg())
  # The gradient batch (step 2) is poisoned: every gradient is NaN, so every trainable leaf is dead.
  report = gradcheck.check_task(_tiny(poison_step=2), _cfg())
  assert report.dead == ["a", "b", "times_zero", "unused"] and report.frozen_with_grad == ["frozen"]


def test_check_loss_on_a_plain_function():
  rng = np.random.default_rng(1)
  params = {
    "w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
    "frozen": jnp.ones(2),
    "sqrt_at_zero": jnp.zeros(2),
    "unused": jnp.ones(4),
    "nested": {"bias": jnp.zeros(2)},
  }
  x_BX = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)

  def loss_fn(p, x):
    y = x @ p["w"] * p["frozen"] + p["nested"]["bias"]
    loss = jnp.mean(y**2) + jnp.sqrt(p["sqrt_at_zero"]).sum()  # d sqrt(x)/dx = inf at 0: not finite
    return loss, {"y": y}

  report = gradcheck.check_loss(loss_fn, params, x_BX, trainable=lambda path: path != "frozen")
  assert report.dead == ["sqrt_at_zero", "unused"] and report.frozen_with_grad == ["frozen"]
  assert (report.trainable, report.frozen, report.moved_frozen) == (4, 1, [])
  mask = jax.tree.map(lambda _: True, params) | {"frozen": False}
  assert gradcheck.check_loss(lambda p, x: loss_fn(p, x)[0], params, x_BX, trainable=mask) == report
  alive = {k: v for k, v in params.items() if k not in ("sqrt_at_zero", "unused")}
  clean = gradcheck.check_loss(
    lambda p, x: jnp.mean((x @ p["w"] * p["frozen"] + p["nested"]["bias"]) ** 2),
    alive,
    x_BX,
    trainable=lambda path: True,
  )
  gradcheck.assert_gradients_flow(clean)
  assert clean.trainable == 3 and "dead none" in str(clean)


def test_assertion_names_ten_leaves_and_a_count():
  report = gradcheck.GradientReport(
    dead=[f"l{i}" for i in range(12)], moved_frozen=[], frozen_with_grad=[], trainable=12, frozen=0
  )
  with pytest.raises(AssertionError, match=r"12 \(l0, l1, .*l9 … and 2 more\)") as info:
    gradcheck.assert_gradients_flow(report)
  assert "l10" not in str(info.value)


def test_lm_trainer_gradients_flow():
  config = tiny.get_config("smoke")  # check_task takes the ConfigDict as well as its dict
  report = gradcheck.check_task(lm.make_task(config_lib.to_dict(config)), config)
  gradcheck.assert_gradients_flow(report)
  assert report.trainable > 0 and report.frozen == 0
