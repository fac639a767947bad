"""Our RASP → tracr's RASP, and tracr's compiler as an offline oracle (tracr-pypi, optional extra).

    from projects.compiled import tracr_bridge
    if tracr_bridge.available():
      result = tracr_bridge.compile_with_tracr(program, vocab, max_seq_len)
      result.apply(["a", "b"]), result.num_layers, result.d_model

Programs are translated node by node (same functions, predicates, names and encodings), so tracr
compiles exactly the program we compile. Nothing in the libraries imports this module.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from typing import Any

from superpose import rasp as ours


def available() -> bool:
  return importlib.util.find_spec("tracr") is not None


def to_tracr(program: ours.RASPExpr):
  """The same program built with ``tracr.rasp.rasp``."""
  from tracr.rasp import rasp as tr

  memo: dict[int, Any] = {}

  def conv(e):
    if id(e) in memo:
      return memo[id(e)]
    if isinstance(e, ours.TokensType):
      out = tr.tokens
    elif isinstance(e, ours.IndicesType):
      out = tr.indices
    elif isinstance(e, ours.LengthType):
      out = tr.length
    elif isinstance(e, ours.Map):
      out = tr.Map(e.f, conv(e.inner), simplify=False)
    elif isinstance(e, ours.LinearSequenceMap):
      out = tr.LinearSequenceMap(conv(e.fst), conv(e.snd), e.fst_fac, e.snd_fac)
    elif isinstance(e, ours.SequenceMap):
      out = tr.SequenceMap(e.f, conv(e.fst), conv(e.snd))
    elif isinstance(e, ours.Full):
      out = tr.Full(e.fill)
    elif isinstance(e, ours.Aggregate):
      out = tr.Aggregate(conv(e.selector), conv(e.sop), default=e.default)
    elif isinstance(e, ours.SelectorWidth):
      out = tr.SelectorWidth(conv(e.selector))
    elif isinstance(e, ours.Select):
      pred = (
        tr.Comparison[e.predicate.name] if isinstance(e.predicate, ours.Comparison) else e.predicate
      )
      out = tr.Select(conv(e.keys), conv(e.queries), pred)
    elif isinstance(e, ours.SelectorAnd):
      out = tr.SelectorAnd(conv(e.fst), conv(e.snd))
    elif isinstance(e, ours.SelectorOr):
      out = tr.SelectorOr(conv(e.fst), conv(e.snd))
    elif isinstance(e, ours.SelectorNot):
      out = tr.SelectorNot(conv(e.inner))
    else:
      raise NotImplementedError(f"to_tracr: no translation for {type(e).__name__}")
    if not isinstance(e, (ours.TokensType, ours.IndicesType, ours.LengthType)):
      out = out.named(e.name)
    if e.encodable:
      out = tr.numerical(out) if ours.is_numerical(e) else tr.categorical(out)
    memo[id(e)] = out
    return out

  return conv(program)


@dataclasses.dataclass
class TracrResult:
  model: Any
  compile_seconds: float
  bos: Any

  @property
  def num_layers(self) -> int:
    return self.model.model_config.num_layers

  @property
  def d_model(self) -> int:
    return len(self.model.residual_labels)

  def apply(self, xs) -> list:
    """tracr's decoded output without BOS (a categorical None decodes to some value there)."""
    return list(self.model.apply([self.bos, *xs]).decoded[1:])


def compile_with_tracr(
  program, vocab, max_seq_len: int, *, causal: bool = False, compiler_bos="BOS", compiler_pad="PAD"
) -> TracrResult:
  from tracr.compiler import compiling

  translated = to_tracr(program)
  start = time.perf_counter()
  model = compiling.compile_rasp_to_model(
    translated,
    vocab=set(vocab),
    max_seq_len=max_seq_len,
    causal=causal,
    compiler_bos=compiler_bos,
    compiler_pad=compiler_pad,
  )
  return TracrResult(model, time.perf_counter() - start, compiler_bos)
