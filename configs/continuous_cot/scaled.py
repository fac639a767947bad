"""Continuous CoT on ProsQA-style graphs, the CPU "scaled recipe": Coconut vs CoT vs No-CoT on one
budget.

Data (generated, ids shuffled, 3–4 hops, disjoint from the released files; ≈ 1 min):
  python -m projects.continuous_cot.data generate --out workdirs/prosqa_gen
Commands (W=workdirs/cot_scaled):
  python -m launch.train --config configs/continuous_cot/scaled.py:coconut --workdir $W/coconut
  python -m launch.train --config configs/continuous_cot/scaled.py:cot     --workdir $W/cot
  python -m launch.train --config configs/continuous_cot/scaled.py:nocot   --workdir $W/nocot
  (another data directory: --config.cot.data_dir=DIR)

Model: the gpt2 preset at thoughts.SIZES['small'] (2 layers, 8 heads, d 256, d_ff 1024, learned
positions, tied embeddings, 40-token vocabulary padded to 40), trained from scratch; no dropout (the
paper has 0.1). Optimiser: AdamW β = (0.9, 0.95), weight decay 0.01, constant lr 5e-4 after 100
warm-up steps (the paper's 1e-4 is for 300 epochs; this budget is ~40× smaller), clipping 1.0.
Budget: STEPS = 3,500 steps × batch 32 = 112k rows ≈ 7.5 epochs of the 15k generated training
problems, for every method. Coconut stages advance every STEPS_PER_STAGE = 400 steps (stage 0 =
steps 1–400, …; the final stage begins at step 1,201 for 3-hop and 1,601 for 4-hop problems),
earlier stages mixed in w.p. 0.1. Evaluation every 500 steps on 500 generated validation problems:
eval/acc (gold hop count of thoughts) and eval/acc_fixed (4 thoughts for every problem), with the
two-candidate accuracy, the fraction of answers that are a candidate and the floors
(projects/continuous_cot/metrics.py); selection.json names the best step.

Batches: length-bucketed (cot.batching = 'bucketed', the default): windows of 32 batches of the
seeded row order sorted by prompt length, widths = the batch's longest prompt rounded up to 8 (≈ 12
widths, one compile each) + K + 2; the compact forward computes the last layer only where a loss can
be. Padding ≈ 5 % of the columns (the previous layout, cot.batching = 'padded', pads every row to T
= 200 on the default generated data: ≈ 40 %). The budget is 3,500 × 32 rows ≈ 13M real tokens (mean
row ≈ 117–121 tokens; the loop's perf/tokens_per_s is the expected real tokens per step;
metrics.jsonl logs data/row_tokens and data/pad_fraction per step, and run() prints the measured
real tokens/s). Side by side (`python -m projects.continuous_cot.bench --train`, same rows, ABBA
rounds): see projects/continuous_cot/results/README.md. Earlier measurements of the padded path on
this 2-core CPU shared with other jobs (padded positions per second):
  coconut, 60 steps, load average 6–9: ≈ 3,500 positions/s (1.8 s/step); load ≈ 4: ≈ 6,500 (1.0
  s/step); cot, load ≈ 4–5: ≈ 4,100 (1.6 s/step); one evaluation (500 problems, gold and fixed
  thought counts) ≈ 10–15 s.

Variants: coconut (default), coconut_bfs (Coconut-BFS labels), cot, nocot, smoke (tiny model, 4
steps, the test-suite size; needs --config.cot.data_dir pointing at a small generated set).
"""

from superpose.train.config import base_config, model_section, variant as config_variant

from projects.continuous_cot.thoughts import SIZES

DATA_DIR = "workdirs/prosqa_gen"
VARIANTS = ("coconut", "coconut_bfs", "cot", "nocot", "smoke")
STEPS = 3500
STEPS_PER_STAGE = 400
BATCH = 32


def get_config(variant: str = "coconut"):
  variant = config_variant(variant, VARIANTS, "coconut", "configs/continuous_cot/scaled.py")
  c = base_config("projects.continuous_cot.train")
  method = {"coconut_bfs": "coconut", "smoke": "coconut"}.get(variant, variant)
  c.cot.update(
    dict(
      method=method,
      data_dir=DATA_DIR,
      steps_per_stage=STEPS_PER_STAGE,
      uniform_prob=0.1,
      labels="bfs" if variant == "coconut_bfs" else "path",
      eval_fixed_thoughts=4,
      eval_limit=500,
    )
  )
  c.optim.update(
    dict(
      lr=5e-4,
      schedule="constant",
      warmup_steps=100,
      b1=0.9,
      b2=0.95,
      weight_decay=0.01,
      clip_norm=1.0,
    )
  )
  c.train.update(
    dict(
      steps=STEPS,
      batch_size=BATCH,
      seq_len=256,
      eval_every=500,
      checkpoint_every=500,
      keep_checkpoints=20,
      log_every=50,
      progress=False,
    )
  )
  size = SIZES["small"]
  if variant == "smoke":
    size = SIZES["tiny"]
    c.cot.update(
      dict(steps_per_stage=1, eval_limit=8, bucket_multiple=64)
    )  # few bucket widths: few compiles
    c.train.update(
      dict(
        steps=4, batch_size=8, eval_every=2, checkpoint_every=2, log_every=1, async_checkpoint=False
      )
    )
  c.model = model_section("gpt2", vocab_size=40, vocab_multiple=8, max_seq_len=256, **size)
  return c
