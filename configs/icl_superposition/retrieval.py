"""ICL task superposition from scratch (spec §2): character retrieval, one task per training
sequence.

The argument after ``retrieval.py:`` is a list of independent keys (big_vision style): ``key=value``
pairs separated by commas, a bare ``key`` meaning True (quote it in the shell). Unknown keys, values
outside the ones listed and conflicting keys ('wide,heads=2', 'recipe=paper,stage=short',
'weights=skewed,stage=finetune') raise ValueError.
  weights=uniform|skewed          the rows' task distribution (skewed: 90 % of rows take k ∈ 0..3)
  stage=full|short|long|finetune  full: 40 lines per row, 1,500 steps; short: 12 lines, 8,000 steps;
                                  long: 400 steps at 40 lines from the short run; finetune: 600
                                  uniform steps from the finished skewed run
  heads=1|2|3|6                   attention heads (and kv heads), either recipe; default 6, 3 with
                                  wide
  wide                            3 heads of d_head 64 at 12 lines, one 24,000-step schedule
                                  (character retrieval only)
  recipe=scaled|paper             the scaled CPU recipe (default) or the paper's (GPU/TPU)
  smoke                           a 4-step run of a 2-layer d 32 model, for the tests
e.g. 'retrieval.py:weights=skewed,stage=short,heads=3', 'retrieval.py:wide',
'retrieval.py:recipe=paper,weights=skewed'. The old variant names (``VARIANTS``) are aliases, and
mix with keys ('retrieval.py:skewed_short,heads=3'): uniform, skewed → weights=…;
{uniform,skewed}_{short,long} → weights=…,stage=…; uniform_from_skewed → stage=finetune;
{uniform,skewed}_wide → weights=…,wide; heads1, heads2, heads3 → heads=…; paper → recipe=paper;
paper_skewed → recipe=paper,weights=skewed; smoke → smoke (``ALIASES``).

Commands (W=workdirs/icl):
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform --workdir \\
      $W/uniform
  python -m launch.train --config configs/icl_superposition/retrieval.py:skewed  --workdir $W/skewed
  python -m launch.train --config configs/icl_superposition/retrieval.py:heads1  --workdir \\
      $W/heads1   (heads2, heads3;
                                                                   heads 6 is `uniform`)
  python -m projects.icl_superposition.calibrate --workdir $W/uniform $W/skewed --out $W/calibration
  (the paper's recipe: paper, paper_skewed; a 4-step run for the tests: smoke)
  Short-row curriculum (below), e.g. uniform:
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform_short \\
      --workdir $W/retrieval_uniform_short
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform_long \\
      --workdir $W/retrieval_uniform_long
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform_from_skewed \\
      --workdir $W/uniform_from_skewed
  (the same with keys: 'retrieval.py:stage=short', 'retrieval.py:stage=long',
  'retrieval.py:stage=finetune')

Scaled CPU recipe (weights=uniform|skewed, heads=…): the llama preset at 3 layers, d 96, 6 heads
(d_head 16), d_ff 384, untied, RoPE, RMSNorm, SwiGLU; 40 in-context lines per row (T = 1 + 40·11 =
441 → 448 columns) instead of the paper's 100; AdamW lr 1e-3, β = (0.9, 0.98), ε 1e-12, weight decay
0.01, clipping 1; warmup-stable-decay (10% warmup, linear decay over the last 10%). Budget: STEPS ×
BATCH rows × 448 columns (see the README for the measured tokens/s and wall time). Skewed: 90% of
rows take k ∈ 0..3.
  → uniform: stays on the 1/8 chance plateau (≈ 13 %); skewed: the skewed prior only, no in-context
    inference
  (≈ 12 %); see results/README.md.

Uniform training at full rows needs many updates before the first gradient toward the in-context
mechanism (with uniform tasks no in-weights prior gives it). Two ways past it on a CPU:
* stage=short then stage=long (``{uniform,skewed}_short`` then ``{uniform,skewed}_long``) — from
  scratch, short rows first: SHORT_LINES lines per row (cheap steps, so SHORT_STEPS updates fit the
  budget), then LONG_STEPS steps at the full row length starting from the short run's parameters
  (``train.init_from``, default ``workdirs/icl/<family>_<weights>_short``) with a fresh optimizer
  and schedule. The task distribution is the weights key's throughout.
* stage=finetune (``uniform_from_skewed``) — FINETUNE_STEPS uniform steps from the finished skewed
  run (default ``workdirs/icl/skewed`` or ``workdirs/icl/mod_add_skewed``): it measures what uniform
  training does to a network that learned the tasks under the skewed prior, not a from-scratch
  uniform model.
  → retrieval with 6 heads: still on the 1/8 plateau at 12 lines (3 heads below); mod_add: ≈ 99 %
    single-task
  accuracy from short → long and from finetune (mod_add.py); see results/README.md.

Character retrieval leaves its plateau only with 3 heads (d_head 32, or 64 below) and many short-row
steps; the chain (H="--config.model.num_heads=3 --config.model.num_kv_heads=3", or
'retrieval.py:uniform_short,heads=3'):
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform_short $H \\
      --workdir $W/retrieval_uniform_short_heads3
  python -m launch.train --config configs/icl_superposition/retrieval.py:uniform_short $H \\
      --config.train.steps=10000 \\
      --config.train.init_from=$W/retrieval_uniform_short_heads3 --workdir \\
      $W/retrieval_uniform_short_heads3_cont
  (then steps=8000 from …_cont → …_cont2)
  → ≈ 77 % single-task accuracy at 12 lines, sharpened mixing; see results/README.md.
  The same with wider heads (``$H --config.model.head_dim=64``; steps 16,000 → …_h3hd64, then 10,000
  and 6,000 more by init_from → …_h3hd64_cont, …_h3hd64_cont2, then 6,000 more → …_h3hd64_cont3)
  → ≈ 91–93 % single-task accuracy, calibrated mixing (close to the paper's copy_9010 curve); see
    results/README.md.
  Skewed fine-tune of it:
  python -m launch.train --config configs/icl_superposition/retrieval.py:skewed_short $H \\
      --config.model.head_dim=64 \\
      --config.train.steps=3000 --config.train.init_from=$W/retrieval_uniform_short_h3hd64_cont2 \\
      --workdir $W/retrieval_skewed_from_uniform_h3hd64
  (then steps=6000 from it → …_h3hd64_cont)
  → stays calibrated, mean |Δ| ≈ 0.03 to copy_9010; see results/README.md.
wide (``uniform_wide`` / ``skewed_wide``) is that d_head 64 model (3 heads, 12 lines) in one
24,000-step schedule:
  python -m launch.train --config configs/icl_superposition/retrieval.py:skewed_wide --workdir \\
      $W/retrieval_skewed_wide
  (= 'retrieval.py:weights=skewed,wide')
  → skewed: ≈ 69 % single-task accuracy, majority tasks only, mixed prompts mostly elsewhere
    (uniform: not run as
  one schedule); see results/README.md.

Paper recipe (recipe=paper; GPU/TPU): 6 layers, d 384, 6 heads, d_ff 1536, 100 lines per row (T
1,112), lr 5e-4, 5,000 steps × 400 rows (warmup 500, decay over the last 500), spec §2.3.
  → not run here (≈ 2.2B tokens, 2–3.5 CPU-days); see results/README.md.

Measured numbers of every recipe: projects/icl_superposition/results/README.md ("Recipes and what
they measured").
"""

from superpose.train.config import base_config, model_section

# key: (default, allowed values); a None default is settled by the other keys (stage: short with
# wide, else full; heads: 3 with wide, else 6).
KEYS = {
  "weights": ("uniform", ("uniform", "skewed")),
  "stage": (None, ("full", "short", "long", "finetune")),
  "heads": (None, (1, 2, 3, 6)),
  "wide": (False, (False, True)),
  "recipe": ("scaled", ("scaled", "paper")),
  "smoke": (False, (False, True)),
}
ALIASES = {  # the old variant names
  "uniform": "weights=uniform",
  "skewed": "weights=skewed",
  "uniform_short": "weights=uniform,stage=short",
  "skewed_short": "weights=skewed,stage=short",
  "uniform_long": "weights=uniform,stage=long",
  "skewed_long": "weights=skewed,stage=long",
  "uniform_from_skewed": "weights=uniform,stage=finetune",
  "uniform_wide": "weights=uniform,wide",
  "skewed_wide": "weights=skewed,wide",
  "heads1": "heads=1",
  "heads2": "heads=2",
  "heads3": "heads=3",
  "paper": "recipe=paper",
  "paper_skewed": "recipe=paper,weights=skewed",
  "smoke": "smoke",
}
VARIANTS = tuple(ALIASES)
FINETUNE_STEPS = 600
SHORT_LINES = {
  "retrieval": 12,
  "mod_add": 20,
}  # short-row stage: T = 1 + 12·11 → 136, 1 + 20·4 → 88 columns
SHORT_STEPS = {"retrieval": 8000, "mod_add": 6000}
WIDE_STEPS = (
  24000  # wide: short rows, 3 heads of d_head 64, one schedule (warmup 400, eval/ckpt every 1,000)
)
LONG_STEPS = 400
STEPS = 1500
BATCH = 16
N_EXAMPLES = 40


def parse_arg(arg: str, keys: dict = KEYS, aliases: dict = ALIASES, where: str = "config") -> dict:
  """``"weights=skewed,stage=short,wide"`` → every key of ``keys`` with its value (the default where
  not given).

  Comma-separated ``key=value`` pairs; a bare ``key`` means True; a bare alias name expands to its
  pairs. An unknown key, a value outside the key's allowed ones, or one key given two different
  values raises ValueError."""
  return {k: default for k, (default, _) in keys.items()} | _given(arg, keys, aliases, where)


def _given(arg: str, keys: dict, aliases: dict, where: str) -> dict:
  out = {}
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    if "=" in item:
      key, text = (s.strip() for s in item.split("=", 1))
      pairs = {key: _value(key, text, keys, aliases, where)}
    elif item in aliases:
      pairs = _given(aliases[item], keys, {}, where)
    else:
      pairs = {item: _value(item, None, keys, aliases, where)}
    for k, v in pairs.items():
      if k in out and out[k] != v:
        raise ValueError(f"{where}: {k} given twice ({out[k]} and {v}) in {arg!r}")
      out[k] = v
  return out


def _value(key: str, text: str | None, keys: dict, aliases: dict, where: str):
  if key not in keys:
    known = f"keys: {', '.join(keys)}" + (f"; aliases: {', '.join(aliases)}" if aliases else "")
    raise ValueError(f"{where}: unknown key {key!r} ({known})")
  allowed = keys[key][1]
  choices = " | ".join(map(str, allowed))
  if text is None:
    if any(v is True for v in allowed):  # `is`: True == 1 would let a bare `heads` through
      return True
    raise ValueError(f"{where}: {key} needs a value ({key}: {choices})")
  for v in allowed:
    if text.lower() == str(v).lower():
      return v
  raise ValueError(f"{where}: {key}={text} is not allowed ({key}: {choices})")


def get_config(arg: str = ""):
  return make_config(
    "retrieval",
    arg,
    n_examples=N_EXAMPLES,
    test_pair="retrieve2,retrieve6",
    eps=1e-12,
    paper_batch=400,
    max_len=448,
    paper_max_len=1112 + 8,
  )


def make_config(
  family: str,
  arg: str,
  *,
  n_examples: int,
  test_pair: str,
  eps: float,
  paper_batch: int,
  max_len: int,
  paper_max_len: int,
):
  """The shared recipe of the from-scratch configs (this file's docstring), for ``family``."""
  where = f"configs/icl_superposition/{family}.py"
  k = parse_arg(arg, where=where)
  skewed, wide, paper = k["weights"] == "skewed", k["wide"], k["recipe"] == "paper"
  if wide and family != "retrieval":
    raise ValueError(f"{where}: wide ({arg!r}) is character retrieval's recipe only")
  if wide and (k["stage"] not in (None, "short") or k["heads"] not in (None, 3) or paper):
    raise ValueError(
      f"{where}: wide is its own recipe (stage=short, heads=3, recipe=scaled); got {arg!r}"
    )
  if paper and k["stage"] not in (None, "full"):
    raise ValueError(
      f"{where}: recipe=paper trains full rows from scratch (stage=full); got {arg!r}"
    )
  if k["stage"] == "finetune" and skewed:
    raise ValueError(
      f"{where}: stage=finetune is uniform training from the skewed run (weights=uniform); got "
      f"{arg!r}"
    )
  stage = k["stage"] or ("short" if wide else "full")
  short, long_, finetune = stage == "short", stage == "long", stage == "finetune"
  heads = k["heads"] or (3 if wide else 6)
  c = base_config("projects.icl_superposition.train")
  lines = 100 if paper else SHORT_LINES[family] if short else n_examples
  c.icl.update(
    dict(
      family=family,
      n_examples=lines,
      test_pair=test_pair,
      task_weights="skewed" if skewed else "uniform",
      skew=0.9,
      eval_prompts=64,
    )
  )
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
  c.optim.update(
    dict(
      lr=5e-4 if paper else 1e-3,
      schedule="wsd",
      warmup_steps=steps // 10,
      decay_fraction=0.1,
      min_lr_ratio=0.0,
      b1=0.9,
      b2=0.98,
      eps=eps,
      weight_decay=0.01,
      clip_norm=1.0,
    )
  )
  c.train.update(
    dict(
      steps=steps,
      batch_size=paper_batch if paper else BATCH,
      eval_every=steps // 10,
      checkpoint_every=steps // 10,
      keep_checkpoints=3,
      log_every=25 if not paper else 50,
    )
  )
  if short:
    c.optim.warmup_steps = SHORT_STEPS[family] // 20
    c.train.update(dict(eval_every=1000 if wide else 500, checkpoint_every=1000 if wide else 500))
  if long_:
    c.train.update(dict(eval_every=100, checkpoint_every=100))
    c.train.init_from = f"workdirs/icl/{family}_{'skewed' if skewed else 'uniform'}_short"
  if finetune:
    c.train.init_from = "workdirs/icl/" + (
      "skewed" if family == "retrieval" else f"{family}_skewed"
    )
  if paper:
    size = dict(
      num_layers=6,
      d_model=384,
      num_heads=heads,
      num_kv_heads=heads,
      d_ff=1536,
      max_seq_len=paper_max_len,
    )
  else:
    size = dict(
      num_layers=3,
      d_model=96,
      num_heads=heads,
      num_kv_heads=heads,
      d_ff=384,
      max_seq_len=max_len,
      **({"head_dim": 64} if wide else {}),
    )
  if k["smoke"]:
    c.icl.update(dict(n_examples=6, eval_prompts=4))
    c.optim.update(dict(warmup_steps=1))
    c.train.update(
      dict(
        steps=4,
        batch_size=4,
        eval_every=2,
        checkpoint_every=2,
        log_every=1,
        async_checkpoint=False,
        progress=False,
      )
    )
    size = dict(num_layers=2, d_model=32, num_heads=2, num_kv_heads=2, d_ff=64, max_seq_len=72)
  c.model = model_section("llama", vocab_size=99, vocab_multiple=8, **size)
  return c
