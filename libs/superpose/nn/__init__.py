"""The sharded Flax NNX decoder-only transformer.

cfg = nn.gpt2(d_model=64, num_layers=2, num_heads=4, vocab_size=100, max_seq_len=32)
model = nn.Transformer(cfg, rngs=nnx.Rngs(0))
out = model(tokens_BT)                      # out.logits_BTV, out.final_hidden_BTD, ...
graphdef, state = nnx.split(model)
new_tokens, lengths = nn.generate(graphdef, state, prompt_BT, prompt_lengths_B, 16)
"""

from superpose.nn.cache import KVCache, cache_shardings, init_cache
from superpose.nn.config import PRESETS, TransformerConfig, from_dict, gpt2, llama
from superpose.nn.decode import generate, generate_uncached, sample_logits
from superpose.nn.decoder import Output, Transformer, stack_layers, unstack_layers

__all__ = [
  "KVCache",
  "Output",
  "cache_shardings",
  "PRESETS",
  "Transformer",
  "TransformerConfig",
  "from_dict",
  "generate",
  "generate_uncached",
  "gpt2",
  "init_cache",
  "llama",
  "sample_logits",
  "stack_layers",
  "unstack_layers",
]
