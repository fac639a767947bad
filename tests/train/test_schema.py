import re

import pytest

from configs.lm import tiny
from superpose import nn
from superpose.train import config as config_lib


def test_tiny_config_builds_its_model():
  for variant in ("", "smoke"):
    cfg = tiny.get_config(variant)
    config_lib.check_schema(cfg.to_dict())
    model = nn.from_dict(cfg.model)
    assert model.vocab_size == 257 and model.padded_vocab == 384 and model.norm == "layernorm"
  with pytest.raises(ValueError, match="unknown variant 'big'"):
    tiny.get_config("big")


def test_model_section_exposes_every_field_with_types():
  c = config_lib.model_section("llama", vocab_size=300, d_model=64, num_heads=4, num_layers=2)
  assert set(c.keys()) == {"preset", *nn.config.FIELDS}
  c.num_kv_heads = 2  # a typed placeholder accepts an int ...
  with pytest.raises(TypeError):
    c.head_dim = "wide"  # ... and refuses other types, as a command-line override would
  c.attn_scale = "0.5"  # numbers arrive as text for this union field
  m = nn.from_dict(c)
  assert m.kv_heads == 2 and m.scale == 0.5 and m.activation == "swiglu" and m.d_ff == 192


def test_unknown_keys_are_reported_with_their_path():
  cfg = tiny.get_config("smoke").to_dict()
  cfg["train"]["stepz"] = 3
  with pytest.raises(config_lib.ConfigError, match=r"config.train.stepz: unknown config key"):
    config_lib.check_schema(cfg)
  cfg = tiny.get_config("smoke").to_dict()
  cfg["model"]["d_modell"] = 3
  with pytest.raises(ValueError, match="model: unknown key 'd_modell'"):
    nn.from_dict(cfg["model"])


@pytest.mark.parametrize(
  "trainer",
  [
    None,
    "projects.icl_superposition.train",
    "projects.superposed_experts.train",
    "projects.continuous_cot.train",
  ],
)
def test_every_key_has_a_one_line_doc_and_the_trainer_declares_its_sections(trainer):
  cfg = config_lib.base_config(trainer).to_dict()
  leaves = [
    f"{k}.{j}" if isinstance(v, dict) else k
    for k, v in cfg.items()
    for j in (v if isinstance(v, dict) else [None])
  ]
  docs = config_lib.docs(trainer)
  assert [k for k in leaves if k not in docs] == [] and all(
    d and "\n" not in d for d in docs.values()
  )
  text = config_lib.describe(cfg)
  assert "train.steps = 1000" in text and "# optimizer steps" in text
  own = set(config_lib.trainer_sections(trainer)) if trainer else set()
  assert own == (
    {"icl"}
    if trainer and "icl" in trainer
    else {"superposed"}
    if trainer and "superposed" in trainer
    else {"cot"}
    if trainer
    else set()
  )
  assert set(cfg) == {*config_lib.TOP, "model", *config_lib.SECTIONS, *own}
  with pytest.raises(config_lib.ConfigError, match="unknown keys"):
    config_lib.section(config_lib.TRAIN, stepz=3)


def test_mesh_and_train_checks():
  cfg = tiny.get_config("smoke").to_dict()
  cfg["mesh"]["ici"] = (2, 2, 1)
  with pytest.raises(config_lib.ConfigError, match="2×2×1 = 4 devices, but 8 are available"):
    config_lib.check_mesh(cfg, 8)
  cfg["mesh"]["ici"] = (2, -1, 1)
  config_lib.check_mesh(cfg, 8)
  cfg["train"]["accum_steps"] = 3
  with pytest.raises(config_lib.ConfigError, match="not divisible by accum_steps=3"):
    config_lib.check_train(cfg)


# --- every key of the schema with a domain: values outside it fail in check_train (one line, before
# anything compiles), values inside pass. (key, bad values, a good value)
DOMAIN_CASES = [
  ("seed", [-1, 1.5], 7),
  ("distributed", ["maybe"], "false"),
  ("peer_timeout_s", [0, -3.0, 600.0, float("nan")], 10.0),
  ("data.val_documents", [-1], 0),
  ("optim.name", ["sgd"], "adamw"),
  ("optim.lr", [-1e-3, 0.0, float("nan"), float("inf")], 1e-4),
  ("optim.schedule", ["cosine"], "wsd"),
  ("optim.warmup_steps", [-1], 0),
  ("optim.decay_fraction", [-0.1, 1.5], 0.5),
  ("optim.min_lr_ratio", [-0.1, 2.0], 0.0),
  ("optim.b1", [-0.1, 1.0], 0.0),
  ("optim.b2", [1.0, 1.2], 0.999),
  ("optim.eps", [0.0, -1e-8], 1e-6),
  ("optim.weight_decay", [-0.1], 0.0),
  ("optim.clip_norm", [-1.0], 0.0),
  (
    "optim.groups",
    [
      ({"pattern": "("},),
      ({"pattern": "a", "lr": -1.0},),
      ({"pattern": "a", "lrr": 1.0},),
      ({"lr": 1.0},),
    ],
    ({"pattern": "blocks/.*", "lr": 1e-3, "clip_norm": 1.0},),
  ),
  ("optim.frozen", [("(",)], ("embed/.*",)),
  ("optim.reset_steps", [(0,), (2.5,), 3], (10, 20)),
  ("train.steps", [0, -5], 1),
  ("train.batch_size", [0, -8], 16),
  ("train.seq_len", [0], 32),
  ("train.accum_steps", [0, -1], 2),
  ("train.z_loss", [-1e-4], 1e-4),
  ("train.eval_every", [-1], 0),
  ("train.eval_batches", [-1], 0),
  ("train.log_every", [-1], 0),
  ("train.checkpoint_every", [-1], 0),
  ("train.keep_checkpoints", [0, -1], 1),
  ("train.profile_steps", [(3, 2), (-1, 2), (1,)], (2, 3)),
  ("train.preemption_check_every", [0], 1),
  ("mesh.ici", [(0, 1, 1), (-1, -1, 1), (2, 2), (-2, 1, 1)], (1, -1, 1)),
  ("mesh.dcn", [(0, 1, 1), (1, 1)], (1, 1, 1)),
  (
    "sharding.rules",
    [(("batch", "model"),), (("batch",),)],
    (("batch", ("data", "fsdp")), ("embed", None)),
  ),
  # the model section: superpose.nn's TransformerConfig checks each field
  ("model.vocab_size", [0], 300),
  ("model.d_model", [0, -64], 128),
  ("model.num_layers", [0], 3),
  ("model.num_heads", [0, 3], 4),
  ("model.num_kv_heads", [0, 3], 1),
  ("model.head_dim", [0], 16),
  ("model.d_ff", [0], 128),
  ("model.max_seq_len", [0], 128),
  ("model.vocab_multiple", [0], 64),
  ("model.norm", ["batchnorm"], "rmsnorm"),
  ("model.norm_eps", [0.0, -1.0], 1e-6),
  ("model.attn_norm", ["middle"], "post"),
  ("model.mlp_norm", ["middle"], "none"),
  ("model.activation", ["tanh"], "relu"),
  ("model.positions", ["alibi"], "rope"),
  ("model.rope_theta", [0.0], 5e5),
  ("model.position_dims", [3], 0),
  ("model.attention", ["flash"], "xla"),
  ("model.causal_block", [-1, 1.5], 0),
  ("model.attn_scale", ["big", "nan"], "one"),
  ("model.remat", ["some"], "full"),
  ("model.param_dtype", ["int8"], "bfloat16"),
  ("model.dtype", ["float64"], "bfloat16"),
  ("model.init_std", [-0.02], 0.0),
  ("model.preset", ["gpt3"], "llama"),
]
# Keys without a domain of values: free text checked where it is used (trainer module, data files,
# tokenizer registry, init_from) or booleans and floats that any value of their type fits.
NO_DOMAIN = {
  "trainer",
  "data.path",
  "data.tokenizer",
  "data.val_path",
  "data.packing",
  "train.async_checkpoint",
  "train.init_from",
  "train.progress",
  "train.log_batch_hash",
  "train.allow_changes",
  "model.final_norm",
  "model.step_threshold",
  "model.mlp_residual",
  "model.causal",
  "model.tie_embeddings",
  "model.use_bias",
  "model.scan_layers",
}


def _flat_keys(tree, prefix=""):
  out = set()
  for k, v in tree.items():
    if isinstance(v, dict):
      out |= _flat_keys(v, f"{prefix}{k}.")
    else:
      out.add(f"{prefix}{k}")
  return out


def test_domain_table_covers_every_key_of_the_schema():
  keys = _flat_keys(config_lib.base_config().to_dict())
  table = [key for key, _, _ in DOMAIN_CASES]
  assert len(table) == len(set(table))
  assert set(table) | NO_DOMAIN == keys, (keys - set(table) - NO_DOMAIN, set(table) - keys)
  assert {k for k in table if not k.startswith("model.")} == set(config_lib.DOMAINS)


def _set(cfg, key, value):
  *parents, last = key.split(".")
  for p in parents:
    cfg = cfg[p]
  cfg[last] = value


@pytest.mark.parametrize("key,bad,good", DOMAIN_CASES, ids=[c[0] for c in DOMAIN_CASES])
def test_every_value_outside_its_domain_is_refused(key, bad, good):
  for value in bad:
    cfg = tiny.get_config("smoke").to_dict()
    if key == "model.position_dims":
      cfg["model"]["positions"] = "sinusoidal"
    _set(cfg, key, value)
    with pytest.raises(config_lib.ConfigError, match=re.escape(key.rsplit(".", 1)[-1])) as e:
      config_lib.check_train(cfg)
    assert "\n" not in str(e.value)
  cfg = tiny.get_config("smoke").to_dict()
  _set(cfg, key, good)
  if key == "model.num_kv_heads":
    cfg["model"]["num_heads"] = 2
  config_lib.check_train(cfg)


def test_batch_must_split_over_the_data_parallel_devices():
  cfg = tiny.get_config("smoke").to_dict()
  cfg["train"]["batch_size"] = 6
  with pytest.raises(
    config_lib.ConfigError, match="batch_size=6 is not divisible by the data-parallel size 4"
  ):
    config_lib.check_batch(cfg, 4)
  cfg["mesh"]["ici"] = (2, 2, 1)  # data 2 × fsdp 2: the batch rule spans both
  with pytest.raises(config_lib.ConfigError, match="data-parallel size 4"):
    config_lib.check_batch(cfg, 4)
  cfg["mesh"]["ici"] = (1, 1, -1)  # tensor parallel only: any batch
  config_lib.check_batch(cfg, 4)
  cfg["mesh"]["ici"] = (-1, 1, 1)
  cfg["train"]["batch_size"] = 8
  config_lib.check_batch(cfg, 4)
  with pytest.raises(config_lib.ConfigError, match="not divisible by the 3 processes"):
    config_lib.check_batch(cfg, 3, num_processes=3)
