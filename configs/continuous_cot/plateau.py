"""The stage-0 plateau study (issue 20 §3): Coconut's stage 0 alone — predict a depth-1 node on a
shortest path from the prompt, one supervised token per row — on one budget, one change at a time.

Data: python -m projects.continuous_cot.data generate --out $D     (D=~/runs/cot/data; ≈ 1 min)
Command (W=~/runs/cot/s0):
  python -m launch.train --config configs/continuous_cot/plateau.py:VARIANT --workdir $W/VARIANT \
      --config.cot.data_dir=$D
Variants: base (path labels, learned positions, ids as generated), relabel (+ per-row node
relabelling), relabel_rope (+ RoPE instead of learned positions), relabel_rope_set (+ the set-valued
loss −log Σ_{v ∈ pool} p(v)), relabel_rope_bfs (Coconut-BFS labels instead of path labels).
Model d 128, 4 heads, d_ff 512, 2 layers; batch 64; AdamW lr 1e-3 after 200 warm-up steps, constant;
1,500 steps (96k rows ≈ 6.4 epochs of the 15k problems); evaluation every 250 steps on 500 generated
validation problems. Read: train/label_nll (the drawn path label's NLL; without looking ahead to the
target no model beats 0.956 nats, uniform over the root's children 3.13 is the plateau) and
eval/hop1 (the argmax at the root is a depth-1 node on a shortest path). Measured results:
projects/continuous_cot/results/README.md.
"""

from configs.continuous_cot import scaled
from superpose.train.config import variant as config_variant

VARIANTS = ("base", "relabel", "relabel_rope", "relabel_rope_set", "relabel_rope_bfs")
STEPS = 1500
STAGE0 = 1_000_000


def get_config(variant: str = "relabel_rope"):
  variant = config_variant(variant, VARIANTS, "relabel_rope", "configs/continuous_cot/plateau.py")
  c = scaled.get_config("coconut_bfs" if variant.endswith("_bfs") else "coconut")
  # stage 0 for the whole run, however long (a longer run, --config.train.steps=N, stays in stage 0)
  c.cot.update(
    dict(
      steps_per_stage=STAGE0,
      stage0_steps=STAGE0,
      relabel=variant != "base",
      loss="set" if variant.endswith("_set") else "label",
    )
  )
  c.model.update(
    dict(d_model=128, num_heads=4, d_ff=512, positions="rope" if "rope" in variant else "learned")
  )
  c.optim.update(dict(lr=1e-3, warmup_steps=200, schedule="constant"))
  c.train.update(
    dict(steps=STEPS, batch_size=64, log_every=25, eval_every=250, checkpoint_every=500)
  )
  return c
