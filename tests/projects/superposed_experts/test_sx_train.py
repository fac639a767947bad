"""The superposition trainer: a smoke run through the loop, the masked loss, optimizer checks, the
configs (tiny variants; the paper's GPT-2 setting, built from the tiny HF fixture and at full
size)."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.superposed_experts import gpt2 as gpt2_config, tiny
from projects.superposed_experts import data, train
from projects.superposed_experts.model import Superposed
from superpose.nn.testing import random_model
from superpose.train import checkpoint, config as config_lib, state as state_lib
from superpose.train.mesh import make_mesh
from superpose.train.metrics import read_metrics

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "hf_gpt2_tiny"


def _pure(tree):
  return {str(k): _pure(v) for k, v in tree.items()} if hasattr(tree, "items") else np.asarray(tree)


def test_smoke_run_trains_blend_and_autoencoders_only(smoke, devices8, check_sampling):
  cfg, expert_params, root = smoke
  workdir = root / "run"
  result = train.run(cfg, str(workdir))
  assert result.step == cfg["train"]["steps"]
  ev = result.eval
  assert math.isfinite(ev["eval/loss"])
  # Equal batches per domain: the overall loss is the mean of the per-domain ones.
  np.testing.assert_allclose(
    ev["eval/loss"], (ev["eval/ce/english"] + ev["eval/ce/french"]) / 2, rtol=1e-5
  )
  check_sampling(
    workdir, "ROMEO:"
  )  # launch.sample on a superposed run (no KV cache: full forwards)
  rows = [r for r in read_metrics(workdir) if "lm_loss" in r]
  assert [r["step"] for r in rows] == list(range(1, cfg["train"]["steps"] + 1))
  assert all(
    r["recon_loss"] > 0 and "recon/0" in r and "recon/1" in r and "alpha/1" in r for r in rows
  )
  assert rows[-1]["loss"] == pytest.approx(
    rows[-1]["lm_loss"] + 3.0 * rows[-1]["recon_loss"], rel=1e-5
  )
  # The experts in the final checkpoint are bit-identical to the runs they came from.
  task = train.SuperposedSpec(cfg)
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    _, abs_params, _ = state_lib.split_model(task.make_model, mesh)
    final = checkpoint.load_params(workdir, abs_params)
  for k, want in enumerate(expert_params):
    jax.tree.map(np.testing.assert_array_equal, _pure(final["experts"][str(k)]), want)
  assert (
    float(np.abs(np.asarray(final["blend"]["bias"])).max()) > 0
  )  # initialised at zero, then trained


def test_loss_masks_padding(smoke):
  cfg, _, _ = smoke
  task = train.SuperposedSpec(cfg)
  model = task.make_model()
  for k, expert in enumerate(model.experts):
    nnx.update(expert, nnx.state(random_model(task.model_cfg.expert, seed=k, scale=0.1)))
  batch = data.domain_stream(cfg).batch(0)
  batch["weights"][1, 20:] = 0.0  # row 1 ends at position 19
  loss = nnx.jit(lambda m, b: task.train_loss(m, b))
  base, metrics = loss(model, batch)
  changed = {k: v.copy() for k, v in batch.items()}
  changed["targets"][1, 20:] = (changed["targets"][1, 20:] + 5) % 257
  changed["inputs"][1, 21:] = (changed["inputs"][1, 21:] + 5) % 257
  again, _ = loss(model, changed)
  assert float(again) == float(base)
  changed["targets"][1, 19] = (changed["targets"][1, 19] + 5) % 257
  assert float(loss(model, changed)[0]) != float(base)
  assert set(metrics) >= {
    "lm_loss",
    "recon_loss",
    "accuracy",
    "recon/0",
    "recon/1",
    "alpha/0",
    "alpha/1",
  }


def test_optimizer_checks(smoke):
  cfg, _, _ = smoke
  task = train.SuperposedSpec(cfg)
  with pytest.raises(config_lib.ConfigError, match="leaves expert parameters trainable"):
    train.checked_optim({**cfg, "optim": {**cfg["optim"], "frozen": ("experts/0/.*",)}}, task)
  blend_only = tiny.get_config("blend_only").to_dict()
  checked = train.checked_optim(blend_only, train.SuperposedSpec(blend_only))
  assert [g["pattern"] for g in checked["optim"]["groups"]] == ["(blend|router)/.*"]
  trunk = {**tiny.get_config("smoke_trunk").to_dict()}
  with pytest.raises(config_lib.ConfigError, match="use 'trunk/.\\*'"):  # the trunk left trainable
    train.checked_optim(
      {**trunk, "optim": {**trunk["optim"], "frozen": ("teachers/.*",)}},
      train.SuperposedSpec(trunk),
    )
  with pytest.raises(config_lib.ConfigError, match="name one run per expert"):
    train.check_experts(("a", ""), 2)


@pytest.mark.parametrize(
  "module, variants", [(tiny, tiny.VARIANTS), (gpt2_config, gpt2_config.VARIANTS)]
)
def test_configs_validate(module, variants):
  for variant in variants:
    config = module.get_config(variant)
    cfg = config.to_dict()
    config_lib.check(cfg)  # what launch/common.py does: the schema of the trainer the config names
    assert ("superposed" in cfg) == (cfg["trainer"] == "projects.superposed_experts.train")
    if "superposed" in cfg:
      train.superposed_config(cfg)
  cfg["superposed"]["ae_layerz"] = (1,)
  with pytest.raises(config_lib.ConfigError, match="ae_layerz"):
    config_lib.check_schema(cfg)
  with pytest.raises(config_lib.ConfigError, match="superposed"):  # not a key of the LM trainer
    config_lib.check_schema({**cfg, "trainer": "superpose.train.lm"})


def test_gpt2_config_has_the_paper_sizes():
  cfg = gpt2_config.get_config().to_dict()
  model_cfg = train.superposed_config(cfg)
  abstract = nnx.to_pure_dict(
    nnx.state(nnx.eval_shape(lambda: Superposed(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
  )
  count = lambda tree: sum(math.prod(a.shape) for a in jax.tree.leaves(tree))
  assert sorted(abstract["autoencoders"], key=int) == [str(l) for l in range(2, 12)]
  assert {count(ae) for ae in abstract["autoencoders"].values()} == {1_770_816}  # p1 §3.3
  assert count(abstract["blend"]) == 16 + 12
  assert train.train_flops_per_token(model_cfg, 128) > 0


def test_gpt2_experts_load_from_hf_directories(smoke):
  """The gpt2 config shrunk to the HF fixture's architecture: both experts read from it; with the
  autoencoders bypassed the superposed logits are transformers' own."""
  cfg = gpt2_config.get_config().to_dict()
  cfg["model"].update(
    vocab_size=100, d_model=32, num_layers=2, num_heads=4, d_ff=128, max_seq_len=32
  )
  cfg["superposed"].update(
    experts=(str(FIXTURE), str(FIXTURE)),
    ae_layers=(0,),
    train_ae_layers=(0, 1),
    num_control=0,
    bottleneck=0,
  )
  cfg["train"]["seq_len"] = 32
  task = train.SuperposedSpec(cfg)
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    graphdef, abs_params, _ = state_lib.split_model(task.make_model, mesh)
    params = task.initial_params(abs_params)
  model = nnx.merge(graphdef, params)
  logits = model(jnp.asarray(np.load(FIXTURE / "inputs.npy")), use_autoencoders=False)[..., :100]
  np.testing.assert_allclose(logits, np.load(FIXTURE / "logits.npy"), atol=1e-4)
  cfg["model"]["d_ff"] = 64
  with pytest.raises(config_lib.ConfigError, match="does not match config.model"):
    train.SuperposedSpec(cfg).initial_params(
      state_lib.split_model(
        lambda: Superposed(train.superposed_config(cfg), rngs=nnx.Rngs(0)), mesh
      )[1]
    )


@pytest.mark.parametrize(
  "variant", [pytest.param("smoke_merge", marks=pytest.mark.slow), "smoke_trunk"]
)
def test_merge_and_trunk_train_through_the_loop(smoke, variant):
  """The learned merge and the one trunk train with the loop on the same data: what came from the
  experts stays bit-identical (the trunk is expert 0), what the method learns moves, the eval is
  finite."""
  cfg, expert_params, root = smoke
  cfg = {
    **cfg,
    **{k: v for k, v in tiny.get_config(variant).to_dict().items() if k in ("optim", "trainer")},
  }
  cfg["superposed"] = {
    **cfg["superposed"],
    **{
      k: tiny.get_config(variant).to_dict()["superposed"][k]
      for k in ("method", "rank", "gate_hidden", "ae_layers", "train_ae_layers")
    },
  }
  workdir = root / variant
  result = train.run(cfg, str(workdir))
  assert result.step == cfg["train"]["steps"] and math.isfinite(result.eval["eval/loss"])
  task = train.SuperposedSpec(cfg)
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    _, abs_params, _ = state_lib.split_model(task.make_model, mesh)
    final = _pure(checkpoint.load_params(workdir, abs_params))
    start = _pure(task.initial_params(abs_params))
  if variant == "smoke_merge":
    for k, want in enumerate(expert_params):
      jax.tree.map(np.testing.assert_array_equal, final["experts"][str(k)], want)
    assert np.abs(final["lam"] - 0.5).max() > 0  # started at the plain average, then trained
  else:
    jax.tree.map(np.testing.assert_array_equal, final["trunk"], expert_params[0])
    moved = lambda name: max(
      float(np.abs(a - b).max())
      for a, b in zip(jax.tree.leaves(final[name]), jax.tree.leaves(start[name]))
    )
    assert moved("deltas") > 0 and moved("gate") > 0
