"""ICL task superposition from scratch (spec §2.1 ``bias_add_simple``): ``x>(x+k) mod 10``, one k
per sequence.

The argument after ``mod_add.py:`` takes the keys of configs/icl_superposition/retrieval.py (its
docstring) except ``wide``: weights=uniform|skewed, stage=full|short|long|finetune, heads=1|2|3|6,
recipe=scaled|paper, smoke, e.g. 'mod_add.py:weights=skewed,stage=short' (quote it in the shell).
The old variant names (``VARIANTS``) are aliases: 'mod_add.py:skewed_short' is
'mod_add.py:weights=skewed,stage=short', 'mod_add.py:heads2,weights=skewed' the heads ablation's
2-head run.

Commands (W=workdirs/icl):
  python -m launch.train --config configs/icl_superposition/mod_add.py:uniform --workdir \\
      $W/mod_add_uniform
  python -m launch.train --config configs/icl_superposition/mod_add.py:skewed  --workdir \\
      $W/mod_add_skewed
  python -m launch.train --config configs/icl_superposition/mod_add.py:uniform_short \\
      --workdir $W/mod_add_uniform_short
  python -m launch.train --config configs/icl_superposition/mod_add.py:uniform_long  --workdir \\
      $W/mod_add_uniform_long
                                                 (20 lines × 6,000 steps, then 100 lines × 400
                                                 steps; see retrieval.py)
  python -m launch.train --config configs/icl_superposition/mod_add.py:uniform_from_skewed \\
      --workdir $W/mod_add_uniform_ws
                                                 (600 uniform steps from the skewed run's
                                                 parameters; see retrieval.py)
  python -m projects.icl_superposition.calibrate --workdir $W/mod_add_uniform $W/mod_add_skewed \\
      --out $W/calibration_mod_add
  → full rows (uniform, skewed): uniform stays on the 1/10 plateau, skewed ≈ 99 % single-task
    accuracy; short → long: ≈ 99 % single-task accuracy for both (uniform calibrated on average over
    prompts, mean |Δ| ≈ 0.01 to bias_add_simple); finetune: ≈ 99 %, keeps the skewed mixing; see
    results/README.md.

Size × seed sweep (issue 21; R=~/runs/icl, D ∈ {48, 96, 192}, S ∈ {0, 1}; the same curriculum, H 6,
d_ff 4·D):
  O="--config.model.d_model=$D --config.model.d_ff=$((4*D)) --config.seed=$S"
  python -m launch.train --config configs/icl_superposition/mod_add.py:uniform_short $O \\
      --workdir $R/mod_add_uniform_d${D}_s${S}_short
  python -m launch.train --config configs/icl_superposition/mod_add.py:uniform_long $O \\
      --config.train.init_from=$R/mod_add_uniform_d${D}_s${S}_short --workdir \\
      $R/mod_add_uniform_d${D}_s${S}
  (skewed: the same with skewed_short / skewed_long and the names …_skewed_d${D}_s${S})
  python -m projects.icl_superposition.calibrate --workdir \\
      $R/mod_add_uniform_d96_s0,$R/mod_add_uniform_d96_s1 \\
      --out DIR --prompts 300 --conditions standard,inside,absent
  python -m projects.icl_superposition.capacity --workdir \\
      d48=$R/mod_add_uniform_d48_s0,$R/mod_add_uniform_d48_s1 \\
      d96=... d192=... --out DIR --prompts 300
  → the uniform curriculum does not reliably learn all ten offsets (0 of 5 runs), the skewed one
    does (≈ 99 %); see results/README.md ("Per prompt").

The recipe of configs/icl_superposition/retrieval.py (same scaled model, schedule and keys) with the
paper's 100 lines per row (T = 1 + 100·4 = 401 → 408 columns), AdamW ε 1e-8 (the paper's non-copy
runs), the paper recipe's batch 800 (200 × 4). Skewed: 90% of rows take k ∈ 0..4. Evaluation: a
random pair of distinct k per prompt (spec §2.1), scored against the reference runs bias_add_simple
(uniform) and bias_add_simple_9010 (skewed).

Measured numbers of every recipe: projects/icl_superposition/results/README.md ("Recipes and what
they measured").
"""

from configs.icl_superposition.retrieval import ALIASES, make_config

VARIANTS = tuple(v for v in ALIASES if not v.endswith("_wide"))


def get_config(arg: str = ""):
  return make_config(
    "mod_add",
    arg,
    n_examples=100,
    test_pair="random",
    eps=1e-8,
    paper_batch=800,
    max_len=408,
    paper_max_len=408,
  )
