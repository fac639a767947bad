"""The paper's 1-D setting (p1 §3, §10): two frozen GPT-2 small models superposed, from HF weights
on disk.

Needs two Hugging Face GPT-2 directories (config.json + model.safetensors or pytorch_model.bin): the
base `gpt2` and its French fine-tune (the notebook fine-tunes 1 epoch on 20k French Wikipedia rows
at seq 128). This repository never downloads weights; point the config at yours:

  python -m launch.train --config configs/superposed_experts/gpt2.py --workdir \\
      workdirs/superposed_gpt2 \
      --config.superposed.experts="('/path/to/gpt2', '/path/to/gpt2-french')"

Setting: GPT-2 small (L12 d768, BPE vocab 50257), 16 control points, cubic spline, α init U[0.45,
0.55] with 0.1-scaled layer biases; autoencoders Linear(768→576)+GELU → Conv1d(576→768, k3) at
blocks 2..10, plus block 11 (the post-final-norm state) in training only; loss 3·MSE + LM; AdamW (β
0.9/0.999, wd 1e-2), lr α 2e-4 / AE 1e-4, constant, clipping 1.0 per group; batch 32 × seq 128; 10
epochs × 563 steps = 5,630 steps. Data: English (Shakespeare + KJV) and French (Littré) domains of
projects.superposed_experts.data, GPT-2 BPE, built under workdirs/superposed_data (as in tiny.py).

Variants:
  (default)  the setting above with the repo's causal autoencoder decoder (left padding) and padding
             masked in the reconstruction MSE. Expected: a training LM loss of ~3+ nats, not 0.175
             (p1 §7.4).
  faithful   the notebook's non-causal Conv1d (padding 1: output t sees token t+1) and MSE over
             every position incl. padding — reproduces the leak (training LM loss falls towards
             ~0.2).
  blend_only the same without autoencoders (p1 §8's missing ablation).
An A100 took ~3 min per epoch in the notebook; both experts run forward only (no backward through
them).
"""

from superpose.train.config import base_config, model_section

DATA_ROOT = "workdirs/superposed_data"
DOMAINS = ("english", "french")
VARIANTS = ("", "faithful", "blend_only")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(
      f"configs/superposed_experts/gpt2.py: unknown variant {variant!r} (known: default, "
      f"{', '.join(v for v in VARIANTS if v)})"
    )
  c = base_config("projects.superposed_experts.train")
  c.model = model_section("gpt2", max_seq_len=1024)  # HF gpt2: n_positions 1024, vocab 50257
  c.data.tokenizer = "gpt2"
  c.superposed.update(
    dict(
      experts=("", ""),  # set: the HF GPT-2 directories of the base and the French fine-tune
      ae_layers=tuple(range(2, 11)),
      train_ae_layers=tuple(range(2, 12)),
      bottleneck=576,
      ae_decoder="conv",
      ae_kernel=3,
      ae_causal=True,
      blend="1d",
      num_control=16,
      degree=3,
      blend_init=(0.45, 0.55),
      bias_scale=0.1,
      embed_blend="mean",
      recon_weight=3.0,
      lm_weight=1.0,
      mask_recon=True,
      domains=DOMAINS,
      train_paths=tuple(f"{DATA_ROOT}/domains/{d}/train.jsonl.gz" for d in DOMAINS),
      val_paths=tuple(f"{DATA_ROOT}/domains/{d}/val.jsonl.gz" for d in DOMAINS),
      eval_batches=8,
    )
  )
  c.optim.update(
    dict(
      lr=2e-4,
      schedule="constant",
      warmup_steps=0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=1e-2,
      clip_norm=0.0,
      frozen=("experts/.*",),
      groups=(
        {"pattern": "(blend|router)/.*", "lr": 2e-4, "clip_norm": 1.0},
        {"pattern": "autoencoders/.*", "lr": 1e-4, "clip_norm": 1.0},
      ),
    )
  )
  c.train.update(
    dict(
      steps=10 * 563,
      batch_size=32,
      seq_len=128,
      eval_every=563,
      eval_batches=8,
      checkpoint_every=563,
      log_every=50,
    )
  )
  if variant == "faithful":
    c.superposed.update(dict(ae_causal=False, mask_recon=False))
  elif variant == "blend_only":
    c.superposed.update(dict(ae_layers=(), train_ae_layers=()))
  return c
