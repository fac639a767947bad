"""Superposed experts at CPU size: an English byte-level GPT, its French fine-tune, and their
superposition.

Data: the domains of projects.superposed_experts.data (English = Shakespeare + KJV, French =
Littré), built once under workdirs/superposed_data (the pipeline does it; by hand:
``python -c "from projects.superposed_experts import data; data.prepare('workdirs/superposed_data',
{d: data.DOMAINS[d] for d in ('english', 'french')})"``, about 25 s from the download cache).
Model: bytes, 4 layers, d 128, 4 heads, seq 128, batch 16.

Commands (W=workdirs/superposed_tiny; the pipeline runs them per seed, with --config.seed):
  python -m launch.train --config configs/superposed_experts/tiny.py:base       --workdir $W/base
  python -m launch.train --config configs/superposed_experts/tiny.py:expert     --workdir $W/expert
  python -m launch.train --config configs/superposed_experts/tiny.py:superpose  --workdir \\
      $W/superpose
  python -m launch.train --config configs/superposed_experts/tiny.py:blend_only --workdir \\
      $W/blend_only

Variants (measured on this 2-core CPU shared with other jobs, load average ≈ 4; one seed; the losses
are nats/byte on the validation sequences of data.domain_eval_sets, 256 per domain, English /
French):
  base        an LM on English (trainer superpose.train.lm), 300 steps: 128 s. Its own val windows
              2.49; held-out sequences 2.31 / 3.57.
  expert      the base fine-tuned on French (init_from $W/base), 150 steps: 68 s. 2.37 on French
              val; held-out 3.06 / 2.37 (English is forgotten: 2.31 → 3.06).
  superpose   this project's trainer: experts ($W/base, $W/expert) frozen, 1-D spline α, causal conv
              AEs at blocks 1, 2 (+ 3, the post-final-norm state, in training), 150 steps: 37 s.
              Superposed 2.51 / 2.73 — no better than α = 0.5 without AEs (2.54 / 2.72).
  blend_only  the same without autoencoders (ae_layers = ()): the "blend without AEs" baseline; 31
              s. 2.59 / 2.65.
  router      superpose + the per-token router (beyond the paper; model.py docstring): 40 s.
              2.37 / 2.54: the only variant that recovers most of each expert's own domain.
  faithful    superpose with the notebook's non-causal conv (output t sees token t+1) and recon MSE
              over padding: 38 s. The leak of p1 §7.4: training LM loss 0.85 (causal: 2.50), and
              inference 2.26 / 2.37, below even the base's own English.
  smoke       2 layers, d 32, seq 32, 4 steps: the test-suite size.

The α / AE learning rates here are 25× / 10× the paper's (2e-4 / 1e-4,
configs/superposed_experts/gpt2.py): the paper trains 5,630 steps; a CPU demo has 150, and at 2e-4 α
would move by at most ~0.03.
"""

from superpose.train.config import base_config, model_section

WORKDIR = "workdirs/superposed_tiny"
DATA_ROOT = "workdirs/superposed_data"
DOMAINS = ("english", "french")  # domain k trains expert k (data.DOMAINS names their corpora)
VARIANTS = (
  "base",
  "expert",
  "superpose",
  "blend_only",
  "router",
  "teacher_forced",
  "faithful",
  "merge",
  "trunk",
  "smoke",
  "smoke_merge",
  "smoke_trunk",
)


def _domain_file(name: str, split: str) -> str:
  return f"{DATA_ROOT}/domains/{name}/{split}.jsonl.gz"


def get_config(variant: str = "superpose"):
  variant = variant or "superpose"
  stage, smoke = variant, False
  if variant.startswith("smoke"):
    stage, smoke = variant.removeprefix("smoke").lstrip("_") or "superpose", True
  if variant not in VARIANTS:
    raise ValueError(
      f"configs/superposed_experts/tiny.py: unknown variant {variant!r} (known: "
      f"{', '.join(VARIANTS)})"
    )

  lm_stage = stage in (
    "base",
    "expert",
  )  # the experts: plain language models (no superposed section)
  c = base_config("superpose.train.lm" if lm_stage else "projects.superposed_experts.train")
  model = dict(vocab_size=257, d_model=128, num_layers=4, num_heads=4, d_ff=512, max_seq_len=128)
  c.data.tokenizer = "bytes"
  if not lm_stage:
    c.superposed.update(
      dict(
        experts=(f"{WORKDIR}/base", f"{WORKDIR}/expert"),
        ae_layers=(1, 2),
        train_ae_layers=(1, 2, 3),
        domains=DOMAINS,
        train_paths=tuple(_domain_file(d, "train") for d in DOMAINS),
        val_paths=tuple(_domain_file(d, "val") for d in DOMAINS),
        eval_batches=2,
      )
    )
  c.train.update(dict(batch_size=16, seq_len=128, eval_batches=4, log_every=50, progress=False))

  if lm_stage:
    name = DOMAINS[0] if stage == "base" else DOMAINS[1]
    c.data.path = _domain_file(name, "train")
    c.data.val_path = _domain_file(name, "val")
    if stage == "base":
      c.optim.update(
        dict(
          lr=3e-3, schedule="warmup_cosine", warmup_steps=100, min_lr_ratio=0.1, weight_decay=0.1
        )
      )
      c.train.update(dict(steps=3000, eval_every=500, checkpoint_every=500, log_every=100))
    else:
      c.train.init_from = f"{WORKDIR}/base"
      c.optim.update(
        dict(lr=1e-3, schedule="warmup_cosine", warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1)
      )
      c.train.update(dict(steps=1000, eval_every=500, checkpoint_every=500, log_every=100))
  elif stage == "merge":
    c.superposed.update(dict(method="merge", ae_layers=(), train_ae_layers=()))
    c.optim.update(
      dict(
        lr=5e-3,
        schedule="constant",
        warmup_steps=0,
        weight_decay=0.0,
        clip_norm=1.0,
        frozen=("experts/.*",),
      )
    )
    c.train.update(dict(steps=300, eval_every=150, checkpoint_every=150))
  elif stage == "trunk":
    c.superposed.update(dict(method="trunk", ae_layers=(), train_ae_layers=(), distill_weight=1.0))
    c.optim.update(
      dict(
        lr=1e-3,
        schedule="warmup_cosine",
        warmup_steps=20,
        min_lr_ratio=0.1,
        weight_decay=0.0,
        clip_norm=1.0,
        frozen=("trunk/.*", "teachers/.*"),
        groups=({"pattern": "gate/.*", "lr": 3e-3},),
      )
    )
    c.train.update(dict(steps=400, eval_every=200, checkpoint_every=200))
  else:
    c.optim.update(
      dict(
        lr=5e-3,
        schedule="constant",
        warmup_steps=0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=1e-2,
        clip_norm=0.0,  # clipping is per group, as the notebook's two clip_grad_norm_ calls
        frozen=("experts/.*",),
        groups=(
          {"pattern": "(blend|router)/.*", "lr": 5e-3, "clip_norm": 1.0},
          {"pattern": "autoencoders/.*", "lr": 1e-3, "clip_norm": 1.0},
        ),
      )
    )
    c.train.update(dict(steps=300, eval_every=150, checkpoint_every=150))
    if stage == "blend_only":
      c.superposed.update(dict(ae_layers=(), train_ae_layers=()))
    elif stage == "router":
      c.superposed.router = True
    elif stage == "teacher_forced":
      c.superposed.train_graph = "teacher_forced"
    elif stage == "faithful":
      c.superposed.update(dict(ae_causal=False, mask_recon=False, train_graph="teacher_forced"))

  if smoke:
    model.update(d_model=32, num_layers=2, num_heads=2, d_ff=64, max_seq_len=32)
    if stage == "superpose":
      c.superposed.update(dict(ae_layers=(0,), train_ae_layers=(0, 1)))
    if not lm_stage:
      c.superposed.update(dict(eval_batches=1, rank=2, gate_hidden=8))
    c.train.update(
      dict(
        steps=4,
        batch_size=4,
        seq_len=32,
        eval_every=2,
        eval_batches=1,
        checkpoint_every=2,
        log_every=1,
        async_checkpoint=False,
      )
    )
  c.model = model_section("gpt2", **model)
  return c
