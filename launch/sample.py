"""Sample from a trained run of any project: ``python -m launch.sample --workdir DIR --prompt
"ROMEO:"``.

Loads the run with :func:`superpose.train.loader.load_model` (its config names its trainer; the
newest readable checkpoint), encodes the prompts with the trainer's tokenizer (``spec.tokenizer()``:
bytes / BPE for language models, the character vocabulary of icl_superposition, the ProsQA symbols
of continuous_cot, whose prompts are space-separated symbols) and generates: a
``superpose.nn.Transformer`` with the KV cache, other models with an LM head (superposed experts, a
merge, one trunk) with a full forward per token; the whole decode loop inside one ``jax.jit`` either
way.
"""

from __future__ import annotations

from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory written by launch.train.", required=True
)
_PROMPT = flags.DEFINE_multi_string("prompt", ["\n"], "Prompt text (repeat the flag for a batch).")
_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per prompt.")
_TEMP = flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
_TOPK = flags.DEFINE_integer("top_k", 40, "Sample among the k most likely tokens (0 = all).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def sample(
  workdir: str,
  prompts: list[str],
  max_new_tokens: int,
  temperature: float,
  top_k: int | None,
  seed: int,
) -> list[str]:
  import jax
  import numpy as np
  from superpose import nn
  from superpose.train.config import ConfigError
  from superpose.train.loader import load_model

  run = load_model(workdir)
  if not hasattr(run.spec, "tokenizer"):
    raise ConfigError(
      f"launch.sample: {workdir} was trained by {run.trainer}, whose spec has no tokenizer() "
      "(no LM head to sample from)"
    )
  tok = run.spec.tokenizer()
  encoded = [
    ([tok.bos_id] if tok.bos_id is not None else []) + list(tok.encode(p)) for p in prompts
  ]
  lengths = np.array([len(e) for e in encoded], np.int32)
  if lengths.min() < 1:
    raise ConfigError("launch.sample: an empty prompt (and the tokenizer has no BOS to start from)")
  max_len = (
    run.model.cfg.max_seq_len
    if isinstance(run.model, nn.Transformer)
    else run.config["model"]["max_seq_len"]
  )
  if lengths.max() + max_new_tokens > max_len:
    raise ConfigError(
      f"prompt ({lengths.max()} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
      f"max_seq_len {max_len}"
    )
  prompt = np.zeros((len(encoded), lengths.max()), np.int32)
  for i, e in enumerate(encoded):
    prompt[i, : len(e)] = e
  generate = nn.generate if isinstance(run.model, nn.Transformer) else nn.generate_uncached
  new, new_lengths = generate(
    run.graphdef,
    run.params,
    prompt,
    lengths,
    max_new_tokens,
    rng=jax.random.key(seed),
    temperature=temperature,
    top_k=top_k or None,
    eos_id=tok.eos_id,
  )
  new, new_lengths = np.asarray(new), np.asarray(new_lengths)
  sep = getattr(tok, "sep", "")  # symbol vocabularies join their symbols with a separator
  texts = [tok.decode(n[:k].tolist()) for n, k in zip(new, new_lengths)]
  return [p + (sep if sep and t else "") + t for p, t in zip(prompts, texts)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  with common.one_line_errors():
    for text in sample(
      _WORKDIR.value, _PROMPT.value, _NEW.value, _TEMP.value, _TOPK.value, _SEED.value
    ):
      print(text)
      print("-" * 40)


if __name__ == "__main__":
  common.run_absl(main)
