"""RASP program → weights of a ``superpose.nn.Transformer`` (p2 §2): ``compile_rasp``.

Pipeline: validate (``validate.check_compilable``, clear errors naming the operation) → label-keyed
graph → value sets → one output space per S-Op (one-hot ``label:value`` directions, or one ``label``
direction when numerical) → blocks per node (``blocks``) → layer allocation (``allocate``) →
residual layout → parameters (``assemble``).

Residual layout (stable, program order rather than tracr's alphabetical one): ``one`` (when some
block uses it), ``tokens:BOS``, ``tokens:PAD``, ``tokens:<vocab...>``, ``indices:0..``, then every
computed S-Op in topological order (a SelectorWidth's private attention-output direction right
after its own directions).
"""

from __future__ import annotations

import time
from collections.abc import Collection

from superpose.rasp import validate
from superpose.rasp.compiler import blocks as B
from superpose.rasp.compiler.allocate import allocate
from superpose.rasp.compiler.assemble import assemble
from superpose.rasp.compiler.bases import Dir, categorical_dirs, dirs_of, sorted_values
from superpose.rasp.compiler.model import CompiledModel
from superpose.rasp.compiler.piecewise import numerical_mlp
from superpose.rasp.expr import is_numerical
from superpose.rasp.graph import extract_graph
from superpose.rasp.selectors import Aggregate, Select, SelectorWidth
from superpose.rasp.sops import IndicesType, LinearSequenceMap, Map, SequenceMap, SOp, TokensType
from superpose.rasp.value_sets import infer_value_sets, may_be_none

COLDNESS = 100.0


def compile_rasp(
  program: SOp,
  vocab: Collection,
  max_seq_len: int,
  *,
  causal: bool = False,
  compiler_bos="BOS",
  compiler_pad="PAD",
  mlp_exactness: float = 100.0,
  coldness: float = COLDNESS,
) -> CompiledModel:
  """Compiles ``program`` for inputs over ``vocab`` of up to ``max_seq_len`` tokens (BOS excluded).

  ``causal=True`` only masks attention (as tracr); the model then agrees with
  ``rasp.causal_evaluate``. Raises ``UnsupportedProgramError`` (a NotImplementedError) naming every
  unsupported operation.
  """
  start = time.perf_counter()
  vocab = frozenset(vocab)
  if any(v is None for v in vocab):
    raise ValueError(
      "None cannot be a vocab token: RASP uses None for 'no value' (Map and SequenceMap pass "
      "it through without calling their function, Comparison refuses it); use another token"
    )
  for name, special in (("compiler_bos", compiler_bos), ("compiler_pad", compiler_pad)):
    if special is None:
      raise ValueError(f"{name} cannot be None (None is RASP's 'no value'); pick another token")
    if special in vocab:
      raise ValueError(f"{name}={special!r} is also in the vocab; pick a token outside it")
  if compiler_bos == compiler_pad:
    raise ValueError(f"compiler_bos and compiler_pad are both {compiler_bos!r}")
  validate.check_compilable(program, vocab, max_seq_len)
  graph = extract_graph(program)
  sets = infer_value_sets(program, vocab, max_seq_len)
  nullable = may_be_none(program, sets)
  bos, pad = Dir("tokens", compiler_bos), Dir("tokens", compiler_pad)
  token_dirs = [bos, pad] + categorical_dirs("tokens", vocab)
  index_dirs = categorical_dirs("indices", range(max_seq_len))

  space: dict[str, list[Dir]] = {}
  for label in graph.topological_labels():
    expr = graph.nodes[label]
    if isinstance(expr, TokensType):
      space[label] = token_dirs[2:]
    elif isinstance(expr, IndicesType):
      space[label] = index_dirs
    elif isinstance(expr, SOp):
      space[label] = [Dir(label)] if is_numerical(expr) else categorical_dirs(label, sets[expr])

  node_blocks: dict[str, list] = {}
  extra_dirs: dict[str, list[Dir]] = {}
  for label, expr in graph.nodes.items():
    if isinstance(expr, SOp) and not isinstance(expr, (TokensType, IndicesType)):
      made = _blocks_for(expr, space, sets, nullable, bos, max_seq_len, mlp_exactness, coldness)
      for b in made:
        B.check_finite(b)
      node_blocks[label] = made
      if isinstance(expr, SelectorWidth):
        extra_dirs[label] = [_sw_dir(label)]
  kinds = {label: tuple(b.kind for b in bs) for label, bs in node_blocks.items()}
  kinds.update(
    {label: () for label, e in graph.nodes.items() if isinstance(e, (TokensType, IndicesType))}
  )
  alloc = allocate(graph, kinds)

  used = set().union(*(dirs_of(b) for bs in node_blocks.values() for b in bs))
  residual = ([B.ONE_DIR] if B.ONE_DIR in used else []) + token_dirs + index_dirs
  for label in graph.topological_labels():
    if label in space and not isinstance(graph.nodes[label], (TokensType, IndicesType)):
      residual += space[label] + extra_dirs.get(label, [])
  missing = used - set(residual)
  assert not missing, f"blocks use directions outside the residual: {sorted(map(str, missing))[:5]}"

  layers = [{"attention": [], "mlp": []} for _ in range(alloc.num_layers)]
  for label, bs in node_blocks.items():
    for b, h in zip(bs, alloc.half_layer[label]):
      layers[h // 2]["attention" if h % 2 == 0 else "mlp"].append(b)
  output_dirs = space[graph.sink]
  cfg, params = assemble(
    residual, token_dirs, index_dirs, output_dirs, layers, max_seq_len=max_seq_len, causal=causal
  )
  return CompiledModel(
    config=cfg,
    params=params,
    residual_labels=[d.label for d in residual],
    tokens=[d.value for d in token_dirs],
    bos=compiler_bos,
    pad=compiler_pad,
    max_seq_len=max_seq_len,
    causal=causal,
    output_label=graph.sink,
    output_encoding="numerical" if is_numerical(program) else "categorical",
    output_values=[d.value for d in output_dirs] if not is_numerical(program) else [],
    layer_allocation=alloc.layers(),
    program=program,
    compile_seconds=time.perf_counter() - start,
  )


def _sw_dir(label: str) -> Dir:
  return Dir(f"{label}_selector_width_attn_output")


def _grid(f, values) -> list[tuple]:
  """(x, f(x)) for every x where f does not raise an ArithmeticError (f(x) may be None)."""
  out = []
  for x in sorted_values(values):
    try:
      out.append((x, f(x)))
    except ArithmeticError:
      continue
  return out


def _blocks_for(expr, space, sets, nullable, bos, max_seq_len, exactness, coldness) -> list:
  label = expr.label
  out = space[label]
  if isinstance(expr, Map):
    inner = expr.inner
    if is_numerical(inner):
      points = _grid(expr.f, sets[inner])
      if is_numerical(expr):  # validate refused a None or non-finite f(x)
        return [numerical_mlp(label, space[inner.label][0], out[0], points, bos)]
      return [
        B.discretising_mlp(
          label, space[inner.label][0], points, B.categorical_writer(out), bos, exactness
        )
      ]
    if is_numerical(expr):
      return [B.categorical_to_numerical_map(label, space[inner.label], out[0], expr.f)]
    return [B.categorical_map(label, space[inner.label], out, expr.f)]
  if isinstance(expr, LinearSequenceMap):
    return [
      B.linear_sequence_map(
        label,
        space[expr.fst.label][0],
        space[expr.snd.label][0],
        out[0],
        expr.fst_fac,
        expr.snd_fac,
      )
    ]
  if isinstance(expr, SequenceMap):
    if expr.fst.label == expr.snd.label:  # one input: a Map of f(x, x)
      f = expr.f
      return [B.categorical_map(label, space[expr.fst.label], out, lambda x: f(x, x))]
    return [B.sequence_map(label, space[expr.fst.label], space[expr.snd.label], out, expr.f, bos)]
  if isinstance(expr, (Aggregate, SelectorWidth)):
    sel = expr.selector
    assert isinstance(sel, Select)  # validate refuses composite selectors
    q_dirs, k_dirs = space[sel.queries.label], space[sel.keys.label]
    nones = {"none_queries": nullable[sel.queries], "none_keys": nullable[sel.keys]}
    if isinstance(expr, SelectorWidth):
      hidden = _sw_dir(label)
      head = B.select_head(
        label, q_dirs, k_dirs, sel.predicate, [(bos, hidden, 1.0)], bos, coldness, 1.0, **nones
      )
      grid = B.selector_width_grid(max_seq_len)
      if is_numerical(expr):
        return [head, numerical_mlp(label, hidden, out[0], grid, bos)]
      return [
        head,
        B.discretising_mlp(label, hidden, grid, B.categorical_writer(out), bos, exactness),
      ]
    if is_numerical(expr):
      ov = [(space[expr.sop.label][0], out[0], 1.0)]
    else:
      by_value = {d.value: d for d in out}
      ov = [(d, by_value[d.value], 1.0) for d in space[expr.sop.label] if d.value in by_value]
    return [B.select_head(label, q_dirs, k_dirs, sel.predicate, ov, bos, coldness, 0.5, **nones)]
  raise validate.UnsupportedProgramError(
    [validate.Issue(expr, f"no compiled block for {type(expr).__name__}")]
  )
