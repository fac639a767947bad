"""Language models at scale (GPT-3 125M / 350M / 1.3B shapes, Llama-3 8B) for TPU pods and GPU
nodes.

Plan before running (fake CPU devices; prints memory per device, collectives, HBM fit, step time):
  python -m launch.plan --config configs/lm/scale.py:8b --devices 256 --chip v5p
  python -m launch.plan --config configs/lm/scale.py:8b_2slice --devices 512 --slices 2
  python -m launch.plan --report benchmarks/scale_plan.md     (every size × layout; results there)
Train (point data.path at a corpus from `python -m superpose.data.corpus build`; the embedded sample
is tiny):
  python -m launch.train --config configs/lm/scale.py:1_3b --workdir workdirs/lm_1_3b \\
      --config.data.path=DIR/train.jsonl.gz
  launch/tpu.sh wraps the same command on every worker of a slice.

Sizes (variant prefix):
  125m   GPT-2 style (pre-LN, learned positions, tied, gelu): L12 d768 H12, seq 2048, GPT-2 BPE
         (50,257).
  350m   L24 d1024 H16, seq 2048.             1_3b   L24 d2048 H16 d_ff 8192, seq 2048.
  8b     the llama preset as Llama-3-8B: L32 d4096, 32 heads, 8 KV heads, d_ff 14,336, vocab
         128,256, RoPE θ 500,000, seq 8192, untied.
All: bf16 parameters and compute (AdamW moments follow the parameters' dtype, so they are bf16 too;
`--config.model.param_dtype=float32` gives f32 master weights at 2× the state), scanned layers, full
rematerialisation, AdamW (β 0.9/0.95, wd 0.1, clip 1.0) with warmup + cosine.

Mesh layouts (variant suffix; axes data × fsdp × tensor):
  _host    8 devices (one TPU host / GPU node): FSDP over all 8 (8b: fsdp 2 × tensor 4).
  (none)   one 256-chip pod slice: FSDP over the slice (8b: fsdp 64 × tensor 4).
  _2slice  2 slices × 256 over DCN: data 2 across slices (dcn (2,1,1)), the slice layout inside
           each.
Global batch: 32 rows on a host (8 for 8b), 256 on a slice, 512 on two slices (× seq tokens).
"""

from superpose.train.config import base_config, model_section

SIZES = {
  "125m": ("gpt2", dict(num_layers=12, d_model=768, num_heads=12, max_seq_len=2048)),
  "350m": ("gpt2", dict(num_layers=24, d_model=1024, num_heads=16, max_seq_len=2048)),
  "1_3b": ("gpt2", dict(num_layers=24, d_model=2048, num_heads=16, d_ff=8192, max_seq_len=2048)),
  "8b": (
    "llama",
    dict(
      num_layers=32,
      d_model=4096,
      num_heads=32,
      num_kv_heads=8,
      d_ff=14336,
      vocab_size=128256,
      rope_theta=500_000.0,
      max_seq_len=8192,
    ),
  ),
}
LAYOUTS = {"host": 32, "": 256, "2slice": 512}  # layout → global batch rows


def get_config(variant: str = "125m"):
  variant = variant or "125m"
  layout = next((name for name in LAYOUTS if name and variant.endswith(f"_{name}")), "")
  size = variant.removesuffix(f"_{layout}") if layout else variant
  if size not in SIZES:
    known = ", ".join(f"{s}{suffix}" for s in SIZES for suffix in ("", "_host", "_2slice"))
    raise ValueError(f"configs/lm/scale.py: unknown variant {variant!r} (known: {known})")
  preset, model = SIZES[size]
  c = base_config()
  c.trainer = "superpose.train.lm"
  c.data.path = "sample:shakespeare.jsonl.gz"
  c.data.tokenizer = "gpt2"
  c.data.val_documents = 2
  c.optim.update(
    dict(
      lr=3e-4 if size == "8b" else 6e-4,
      schedule="warmup_cosine",
      warmup_steps=2000,
      min_lr_ratio=0.1,
      b1=0.9,
      b2=0.95,
      weight_decay=0.1,
      clip_norm=1.0,
    )
  )
  seq = model["max_seq_len"]
  batch = LAYOUTS[layout] if not (size == "8b" and layout == "host") else 8
  c.train.update(
    dict(
      steps=100_000,
      batch_size=batch,
      seq_len=seq,
      eval_every=1000,
      eval_batches=8,
      log_every=10,
      checkpoint_every=1000,
      keep_checkpoints=3,
    )
  )
  tensor = 4 if size == "8b" else 1
  c.mesh.ici = (1, -1, tensor)
  c.mesh.dcn = (2, 1, 1) if layout == "2slice" else (1, 1, 1)
  c.model = model_section(
    preset, **model, scan_layers=True, remat="full", param_dtype="bfloat16", dtype="bfloat16"
  )
  return c
