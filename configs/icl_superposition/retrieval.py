"""ICL task superposition from scratch (spec §2): character retrieval, one task per training sequence.

Commands (W=workdirs/icl):
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform --workdir $W/uniform
  python -m launch.train --config configs/icl_superposition/retrieval.py:skewed  --workdir $W/skewed
  python -m launch.train --config configs/icl_superposition/retrieval.py:heads1  --workdir $W/heads1   (heads2, heads3;
                                                                   heads 6 is `uniform`)
  python -m projects.icl_superposition.calibrate --workdir $W/uniform $W/skewed --out $W/calibration
  (the paper's recipe: paper, paper_skewed; a 4-step run for the tests: smoke)
  Short-row curriculum (below), e.g. uniform:
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform_short --workdir $W/retrieval_uniform_short
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform_long  --workdir $W/retrieval_uniform_long
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform_from_skewed --workdir $W/uniform_from_skewed

Scaled CPU recipe (uniform, skewed, heads*): the llama preset at 3 layers, d 96, 6 heads (d_head 16),
d_ff 384, untied, RoPE, RMSNorm, SwiGLU; 40 in-context lines per row (T = 1 + 40·11 = 441 → 448 columns)
instead of the paper's 100; AdamW lr 1e-3, β = (0.9, 0.98), ε 1e-12, weight decay 0.01, clipping 1;
warmup-stable-decay (10% warmup, linear decay over the last 10%). Budget: STEPS × BATCH rows ×
448 columns (see the README for the measured tokens/s and wall time). Skewed: 90% of rows take k ∈ 0..3.

Uniform training at full rows stays on the 1/8 (retrieval) or 1/10 (mod_add) chance plateau in this budget
(1,500 steps): with uniform tasks no in-weights prior gives the first gradient toward the in-context mechanism,
which appears only after many updates. Two ways past it on a CPU:
* ``{uniform,skewed}_short`` then ``{uniform,skewed}_long`` — from scratch, short rows first: SHORT_LINES lines per
  row (cheap steps, so SHORT_STEPS updates fit the budget), then LONG_STEPS steps at the full row length starting
  from the short run's parameters (``train.init_from``, default ``workdirs/icl/<family>_<weights>_short``) with a
  fresh optimizer and schedule. The task distribution is the variant's throughout.
* ``uniform_from_skewed`` — FINETUNE_STEPS uniform steps from the finished ``skewed`` run
  (default ``workdirs/icl/skewed`` or ``workdirs/icl/mod_add_skewed``): it measures what uniform training does to
  a network that learned the tasks under the skewed prior, not a from-scratch uniform model.

Character retrieval leaves its plateau only with 3 heads (d_head 32, or 64 below) and many short-row steps; measured chain
(results README, "Character retrieval"; 56.6M tokens, ≈ 1.5 h on 2 cores): H="--config.model.num_heads=3
--config.model.num_kv_heads=3"
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform_short $H --workdir $W/retrieval_uniform_short_heads3
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform_short $H --config.train.steps=10000 \\
      --config.train.init_from=$W/retrieval_uniform_short_heads3 --workdir $W/retrieval_uniform_short_heads3_cont
  (then steps=8000 from …_cont → …_cont2)
  → 77 % single-task accuracy at 12 lines, sharpened mixing (P0 / (P0 + P1) = 0.09 at d = 0.3). The same chain
  with skewed_short (12,000 + 8,000 + 6,000 steps) learns the majority tasks only. With wider heads
  (``$H --config.model.head_dim=64``; steps 16,000 → …_h3hd64, then 10,000 and 6,000 more by init_from →
  …_h3hd64_cont, …_h3hd64_cont2, then 6,000 more → …_h3hd64_cont3): 91 % at 32,000 steps, 93 % at 38,000, and calibrated
  mixing (0.29 at d = 0.3; mean |Δ| 0.024 to the paper's copy_9010 curve). Skewed fine-tune of it:
  python -m launch.train --config configs/icl_superposition/retrieval.py:skewed_short $H --config.model.head_dim=64 \\
      --config.train.steps=3000 --config.train.init_from=$W/retrieval_uniform_short_h3hd64_cont2 --workdir $W/retrieval_skewed_from_uniform_h3hd64
  (then steps=6000 from it → …_h3hd64_cont): mean |Δ| 0.034 to copy_9010.
``uniform_wide`` / ``skewed_wide`` are that d_head 64 model (3 heads, 12 lines) in one 24,000-step schedule:
  python -m launch.train --config configs/icl_superposition/retrieval.py:skewed_wide --workdir $W/retrieval_skewed_wide
  → measured: 68.6 % single-task accuracy (52.2M tokens, 1 h 58 min on 2 cores, 7,400 tokens/s), majority tasks only
  (retrieve6 alone 0.27), mixed prompts mostly elsewhere (0.96 at d = 0.4; mean |Δ| 0.369 to copy_9010).
  ``uniform_wide`` has not been run as one schedule; the chain above reached 91 % at 32,000 steps.

Paper recipe (GPU/TPU): 6 layers, d 384, 6 heads, d_ff 1536, 100 lines per row (T 1,112), lr 5e-4,
5,000 steps × 400 rows (warmup 500, decay over the last 500), spec §2.3.
"""
from superpose.train.config import base_config, model_section

from projects.icl_superposition.train import attach_schema, icl_section

VARIANTS = ("uniform", "skewed", "uniform_short", "skewed_short", "uniform_long", "skewed_long", "uniform_from_skewed",
            "uniform_wide", "skewed_wide", "heads1", "heads2", "heads3", "paper", "paper_skewed", "smoke")
FINETUNE_STEPS = 600
SHORT_LINES = {"retrieval": 12, "mod_add": 20}     # short-row stage: T = 1 + 12·11 → 136, 1 + 20·4 → 88 columns
SHORT_STEPS = {"retrieval": 8000, "mod_add": 6000}
WIDE_STEPS = 24000           # *_wide: short rows, 3 heads of d_head 64, one schedule (warmup 400, eval/ckpt every 1,000)
LONG_STEPS = 400
STEPS = 1500
BATCH = 16
N_EXAMPLES = 40


def get_config(variant: str = "uniform"):
  return make_config("retrieval", variant, n_examples=N_EXAMPLES, test_pair="retrieve2,retrieve6", eps=1e-12,
                     paper_batch=400, max_len=448, paper_max_len=1112 + 8)


def make_config(family: str, variant: str, *, n_examples: int, test_pair: str, eps: float, paper_batch: int,
                max_len: int, paper_max_len: int):
  """The shared recipe of the from-scratch configs (this file's docstring), for ``family``."""
  variant = variant or "uniform"
  if variant not in VARIANTS:
    raise ValueError(f"configs/icl_superposition/{family}.py: unknown variant {variant!r} "
                     f"(known: {', '.join(VARIANTS)})")
  c = base_config()
  c.trainer = "projects.icl_superposition.train"
  skewed = variant in ("skewed", "paper_skewed") or variant.startswith("skewed_")
  wide = variant.endswith("_wide")
  if wide and family != "retrieval":
    raise ValueError(f"configs/icl_superposition/{family}.py: {variant!r} is character retrieval's recipe only")
  short, long_ = variant.endswith("_short") or wide, variant.endswith("_long")
  finetune = variant == "uniform_from_skewed"
  paper = variant.startswith("paper")
  lines = 100 if paper else SHORT_LINES[family] if short else n_examples
  c.icl = icl_section(family=family, n_examples=lines, test_pair=test_pair,
                      task_weights="skewed" if skewed else "uniform", skew=0.9, eval_prompts=64)
  if paper:
    steps = 5000
  elif finetune:
    steps = FINETUNE_STEPS
  elif wide:
    steps = WIDE_STEPS
  elif short:
    steps = SHORT_STEPS[family]
  else:
    steps = LONG_STEPS if long_ else STEPS
  c.optim.update(dict(lr=5e-4 if paper else 1e-3, schedule="wsd", warmup_steps=steps // 10, decay_fraction=0.1,
                      min_lr_ratio=0.0, b1=0.9, b2=0.98, eps=eps, weight_decay=0.01, clip_norm=1.0))
  c.train.update(dict(steps=steps, batch_size=paper_batch if paper else BATCH, eval_every=steps // 10,
                      checkpoint_every=steps // 10, keep_checkpoints=3, log_every=25 if not paper else 50))
  if short:
    c.optim.warmup_steps = SHORT_STEPS[family] // 20
    c.train.update(dict(eval_every=1000 if wide else 500, checkpoint_every=1000 if wide else 500))
  if long_:
    c.train.update(dict(eval_every=100, checkpoint_every=100))
    c.train.init_from = f"workdirs/icl/{family}_{'skewed' if skewed else 'uniform'}_short"
  if finetune:
    c.train.init_from = "workdirs/icl/" + ("skewed" if family == "retrieval" else f"{family}_skewed")
  heads = 3 if wide else {"heads1": 1, "heads2": 2, "heads3": 3}.get(variant, 6)
  if paper:
    size = dict(num_layers=6, d_model=384, num_heads=6, num_kv_heads=6, d_ff=1536, max_seq_len=paper_max_len)
  else:
    size = dict(num_layers=3, d_model=96, num_heads=heads, num_kv_heads=heads, d_ff=384, max_seq_len=max_len,
                **({"head_dim": 64} if wide else {}))
  if variant == "smoke":
    c.icl.update(dict(n_examples=6, eval_prompts=4))
    c.optim.update(dict(warmup_steps=1))
    c.train.update(dict(steps=4, batch_size=4, eval_every=2, checkpoint_every=2, log_every=1,
                        async_checkpoint=False, progress=False))
    size = dict(num_layers=2, d_model=32, num_heads=2, num_kv_heads=2, d_ff=64, max_seq_len=72)
  c.model = model_section("llama", vocab_size=99, vocab_multiple=8, **size)
  return attach_schema(c)
