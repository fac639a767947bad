"""Continuous CoT on ProsQA graphs, the paper's full recipe (RS §5.1; spec §2.1–2.2), for GPU/TPU.

Data: python -m projects.continuous_cot.data generate --out workdirs/prosqa_gen   (15,000 train
problems, 3–4 hops, ids shuffled; the paper's graph_4 train split has 14,785). Commands
(W=workdirs/cot_paper):
  python -m launch.train --config configs/continuous_cot/paper.py:coconut --workdir $W/coconut
  python -m launch.train --config configs/continuous_cot/paper.py:cot     --workdir $W/cot
  python -m launch.train --config configs/continuous_cot/paper.py:nocot   --workdir $W/nocot
  launch/gpu.sh / launch/tpu.sh wrap the same command; the global batch is split over the data axis.

Recipe: GPT-2 from scratch, 2 layers, 8 heads, d 768 (d_ff 3072), learned positions, tied
embeddings, 40-token vocabulary. AdamW lr 1e-4 constant, weight decay 0.01, β = (0.9, 0.95) as the
paper states (the RS code's optimiser uses β2 = 0.999: variant ``rs_code``), no clipping. Global
batch 256 (128 per GPU × 2), 300 epochs (STEPS = 300 · 15,000 / 256), 25 epochs per stage, earlier
stages mixed in w.p. 0.1 (the RS-repo curriculum: the final stage starts at epoch 75 for 3-hop and
epoch 100 for 4-hop problems). Differences: no dropout (the paper has 0.1), no Coconut
edge/candidate tokens beyond the 40-token vocabulary. Batches: length-bucketed with the compact
forward (cot.batching='bucketed', the default; 'padded' pads every row to T as before) — the same
loss and gradients, ≈ 5 % padding instead of ≈ 40 %. Evaluation and a checkpoint every 5 epochs (295
steps; every one kept: 60 × ≈ 170 MB of parameters and AdamW state) on 500 generated validation
problems: eval/acc (gold hop count of thoughts, as the paper) and eval/acc_fixed (4 thoughts);
selection.json names the best step — the paper picks the best-val checkpoint too. The paper reports
≈ 24 h on 2×A100 for one run. Variants: coconut (default), coconut_bfs, cot, nocot, rs_code (coconut
with β2 = 0.999); eos and eos_bfs_loss: the follow-up's recipe (Emergence of Superposition, spec
§5.3: `args/coconut_{standard,bfs_loss}.yaml`) — 350 epochs, stage 0 = 100 epochs then 50 per stage,
global batch 512 (256 × 2), nodes relabelled on every row (`shuffle_nodes`), the optimizer reset at
each stage, mixing w.p. 0.1; eos_bfs_loss adds BFS labels and the set-valued loss −log Σ_{v ∈
frontier} p(v). Its lr is not in the spec: 1e-4 as the paper. The CPU-scale evidence for why these
matter (the stage-0 plateau): projects/continuous_cot/results/README.md.
"""

from superpose.train.config import base_config, model_section, variant as config_variant

from projects.continuous_cot.thoughts import SIZES

DATA_DIR = "workdirs/prosqa_gen"
VARIANTS = ("coconut", "coconut_bfs", "cot", "nocot", "rs_code", "eos", "eos_bfs_loss")
TRAIN_PROBLEMS, BATCH, EPOCHS = 15000, 256, 300
STEPS_PER_EPOCH = -(-TRAIN_PROBLEMS // BATCH)  # 59
STEPS = EPOCHS * TRAIN_PROBLEMS // BATCH  # 17,578


def get_config(variant: str = "coconut"):
  variant = config_variant(variant, VARIANTS, "coconut", "configs/continuous_cot/paper.py")
  c = base_config("projects.continuous_cot.train")
  eos = variant.startswith("eos")
  method = "coconut" if variant in ("coconut_bfs", "rs_code") or eos else variant
  c.cot.update(
    dict(
      method=method,
      data_dir=DATA_DIR,
      epochs_per_stage=50 if eos else 25,
      uniform_prob=0.1,
      labels="bfs" if variant in ("coconut_bfs", "eos_bfs_loss") else "path",
      eval_fixed_thoughts=4,
      eval_limit=500,
    )
  )
  batch, steps = BATCH, STEPS
  if eos:
    c.cot.update(
      dict(
        stage0_epochs=100,
        relabel=True,
        reset_optimizer=True,
        loss="set" if variant == "eos_bfs_loss" else "label",
      )
    )
    batch, steps = 2 * BATCH, 350 * TRAIN_PROBLEMS // (2 * BATCH)
  c.optim.update(
    dict(
      lr=1e-4,
      schedule="constant",
      warmup_steps=0,
      b1=0.9,
      b2=0.999 if variant == "rs_code" else 0.95,
      weight_decay=0.01,
      clip_norm=0.0,
    )
  )
  every = 5 * -(-TRAIN_PROBLEMS // batch)
  c.train.update(
    dict(
      steps=steps,
      batch_size=batch,
      seq_len=256,
      eval_every=every,
      checkpoint_every=every,
      keep_checkpoints=71,
      log_every=20,
    )
  )
  c.model = model_section(
    "gpt2", vocab_size=40, vocab_multiple=8, max_seq_len=256, **SIZES["paper"]
  )
  return c
