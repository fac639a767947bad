"""Continuous CoT on ProsQA graphs, the paper's full recipe (RS §5.1; spec §2.1–2.2), for GPU/TPU.

Data: python -m projects.continuous_cot.data generate --out workdirs/prosqa_gen   (15,000 train problems,
3–4 hops, ids shuffled; the paper's graph_4 train split has 14,785). Commands (W=workdirs/cot_paper):
  python -m launch.train --config configs/continuous_cot/paper.py:coconut --workdir $W/coconut
  python -m launch.train --config configs/continuous_cot/paper.py:cot     --workdir $W/cot
  python -m launch.train --config configs/continuous_cot/paper.py:nocot   --workdir $W/nocot
  launch/gpu.sh / launch/tpu.sh wrap the same command; the global batch is split over the data axis.

Recipe: GPT-2 from scratch, 2 layers, 8 heads, d 768 (d_ff 3072), learned positions, tied embeddings,
40-token vocabulary. AdamW lr 1e-4 constant, weight decay 0.01, β = (0.9, 0.95) as the paper states (the RS
code's optimiser uses β2 = 0.999: variant ``rs_code``), no clipping. Global batch 256 (128 per GPU × 2),
300 epochs (STEPS = 300 · 15,000 / 256), 25 epochs per stage, earlier stages mixed in w.p. 0.1 (the RS-repo
curriculum: the final stage starts at epoch 75 for 3-hop and epoch 100 for 4-hop problems).
Differences: no dropout (the paper has 0.1), no Coconut edge/candidate tokens beyond the 40-token vocabulary.
Batches: length-bucketed with the compact forward (cot.batching='bucketed', the default; 'padded' pads every row
to T as before) — the same loss and gradients, ≈ 5 % padding instead of ≈ 40 %.
Evaluation and a checkpoint every 5 epochs (295 steps; every one kept: 60 × ≈ 170 MB of parameters and
AdamW state) on 500 generated validation problems: eval/acc (gold hop count of thoughts, as the
paper) and eval/acc_fixed (4 thoughts); selection.json names the best step — the paper picks the best-val
checkpoint too. The paper reports ≈ 24 h on 2×A100 for one run.
Variants: coconut (default), coconut_bfs, cot, nocot, rs_code (coconut with β2 = 0.999).
"""
from superpose.train.config import base_config, model_section

from projects.continuous_cot.thoughts import SIZES
from projects.continuous_cot.train import attach_schema, cot_section

DATA_DIR = "workdirs/prosqa_gen"
VARIANTS = ("coconut", "coconut_bfs", "cot", "nocot", "rs_code")
TRAIN_PROBLEMS, BATCH, EPOCHS = 15000, 256, 300
STEPS_PER_EPOCH = -(-TRAIN_PROBLEMS // BATCH)   # 59
STEPS = EPOCHS * TRAIN_PROBLEMS // BATCH          # 17,578


def get_config(variant: str = "coconut"):
  variant = variant or "coconut"
  if variant not in VARIANTS:
    raise ValueError(f"configs/continuous_cot/paper.py: unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
  c = base_config()
  c.trainer = "projects.continuous_cot.train"
  method = {"coconut_bfs": "coconut", "rs_code": "coconut"}.get(variant, variant)
  c.cot = cot_section(method=method, data_dir=DATA_DIR, epochs_per_stage=25, uniform_prob=0.1,
                      labels="bfs" if variant == "coconut_bfs" else "path", eval_fixed_thoughts=4, eval_limit=500)
  c.optim.update(dict(lr=1e-4, schedule="constant", warmup_steps=0, b1=0.9, b2=0.999 if variant == "rs_code" else 0.95,
                      weight_decay=0.01, clip_norm=0.0))
  c.train.update(dict(steps=STEPS, batch_size=BATCH, seq_len=256, eval_every=5 * STEPS_PER_EPOCH,
                      checkpoint_every=5 * STEPS_PER_EPOCH, keep_checkpoints=61, log_every=20))
  c.model = model_section("gpt2", vocab_size=40, vocab_multiple=8, max_seq_len=256, **SIZES["paper"])
  return attach_schema(c)
