"""Sample from a trained run: ``python -m launch.sample --workdir DIR --prompt "ROMEO:"``.

Reads the run's saved config (``DIR/config.json``), restores the newest readable checkpoint's
parameters and generates with the KV cache, the whole decode loop inside one ``jax.jit``.
"""
from __future__ import annotations

import json
import pathlib

from absl import app, flags

from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by launch.train.", required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", ["\n"], "Prompt text (repeat the flag for a batch).")
_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per prompt.")
_TEMP = flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
_TOPK = flags.DEFINE_integer("top_k", 40, "Sample among the k most likely tokens (0 = all).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def sample(workdir: str, prompts: list[str], max_new_tokens: int, temperature: float, top_k: int | None,
           seed: int) -> list[str]:
  import jax
  import numpy as np
  from superpose import nn
  from superpose.data.tokenizers import get_tokenizer
  from superpose.train import checkpoint, state as state_lib
  from superpose.train.config import ConfigError
  from superpose.train.mesh import make_mesh
  from flax import nnx

  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"no config.json in {workdir}: is it a launch.train workdir?")
  cfg = json.loads(path.read_text())
  if cfg.get("trainer") != "superpose.train.lm":
    raise ConfigError(f"launch.sample samples language models; {workdir} was trained by {cfg.get('trainer')}")
  model_cfg = nn.from_dict(cfg["model"])
  tok = get_tokenizer(cfg["data"]["tokenizer"])
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    make = lambda: nn.Transformer(model_cfg, rngs=nnx.Rngs(0))
    graphdef, abs_params, _ = state_lib.split_model(make, mesh)
    params = checkpoint.load_params(workdir, abs_params)
    encoded = [([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(p) for p in prompts]
    lengths = np.array([len(e) for e in encoded], np.int32)
    if lengths.max() + max_new_tokens > model_cfg.max_seq_len:
      raise ConfigError(f"prompt ({lengths.max()} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                        f"max_seq_len {model_cfg.max_seq_len}")
    prompt = np.zeros((len(encoded), lengths.max()), np.int32)
    for i, e in enumerate(encoded):
      prompt[i, :len(e)] = e
    new, new_lengths = nn.generate(graphdef, params, prompt, lengths, max_new_tokens,
                                   rng=jax.random.key(seed), temperature=temperature, top_k=top_k or None,
                                   eos_id=tok.eos_id)
  new, new_lengths = np.asarray(new), np.asarray(new_lengths)
  return [p + tok.decode(n[:k]) for p, n, k in zip(prompts, new, new_lengths)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  with common.one_line_errors():
    for text in sample(_WORKDIR.value, _PROMPT.value, _NEW.value, _TEMP.value, _TOPK.value, _SEED.value):
      print(text)
      print("-" * 40)


if __name__ == "__main__":
  common.run_absl(main)
