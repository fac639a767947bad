"""Coconut vs CoT vs No-CoT on one CPU budget, on small graphs (the plateau study's recipe; issue 20
§3).

On ProsQA-size graphs (23 nodes, 36 edges) a CPU-sized model stays on the stage-0 plateau for the
whole budget a session allows (configs/continuous_cot/plateau.py); on graphs of 8–12 drawn nodes
(10.7 nodes, 12.7 edges, 3–4 hops) it learns the lookup in ≈ 1,100 steps. This recipe runs the whole
Coconut curriculum there, and CoT and No-CoT on the same model, rows and steps.

Data (≈ 2 min): python -m projects.continuous_cot.data generate --out $D --nodes 8,12
Commands (W=~/runs/cot/cpu):
  python -m launch.train --config configs/continuous_cot/cpu.py:coconut --workdir $W/coconut \\
      --config.cot.data_dir=$D
  (and :cot, :nocot; :coconut_set uses the set-valued loss over the label pool; :coconut_long,
  :cot_long, :nocot_long: 7,000 steps, Coconut's stages 1–4 of 750 steps: stage 1 from 1,501, final
  stage of 3-hop problems from 3,751, of 4-hop ones from 4,501)
Model: gpt2 preset L2 H4 d128 d_ff 512, RoPE, tied embeddings, no dropout. Rows relabelled per row
(node ids drawn from all 31 node tokens). AdamW β (0.9, 0.95), wd 0.01, lr 1e-3: 200 warm-up steps,
stable, linear decay over the last 20 %; batch 64; 3,500 steps (224k rows ≈ 15 epochs of 15k
problems) for every method. Coconut: stage 0 = steps 1–1,500, then 300 steps per stage (stage 1 from
1,501, 2 from 1,801, 3 from 2,101: the final stage of 3-hop problems; 4 from 2,401), earlier stages
mixed in w.p. 0.1, the optimizer state reset at each stage start. Evaluation every 250 steps on 500
generated validation problems (every metric of projects/continuous_cot/metrics.py and the hop-k
accuracy of the thoughts). Results: projects/continuous_cot/results/README.md.
"""

from configs.continuous_cot import scaled
from superpose.train.config import variant as config_variant

VARIANTS = ("coconut", "coconut_set", "cot", "nocot", "coconut_long", "cot_long", "nocot_long")
STEPS = 3500
LONG = 7000  # the *_long variants: twice the budget, Coconut's stages 1–4 of 750 steps each


def get_config(variant: str = "coconut"):
  variant = config_variant(variant, VARIANTS, "coconut", "configs/continuous_cot/cpu.py")
  long = variant.endswith("_long")
  c = scaled.get_config(variant.replace("_long", "").replace("_set", ""))
  c.cot.update(
    dict(
      steps_per_stage=750 if long else 300,
      stage0_steps=1500,
      reset_optimizer=True,
      relabel=True,
      loss="set" if variant == "coconut_set" else "label",
    )
  )
  c.model.update(dict(d_model=128, num_heads=4, d_ff=512, positions="rope"))
  c.optim.update(
    dict(lr=1e-3, warmup_steps=200, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
  )
  c.train.update(
    dict(
      steps=LONG if long else STEPS,
      batch_size=64,
      log_every=25,
      eval_every=250,
      checkpoint_every=500,
    )
  )
  return c
