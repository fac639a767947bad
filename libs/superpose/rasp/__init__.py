"""RASP with tracr's API shape: the language, a reference evaluator, tracr's library and its test
cases.

    from superpose import rasp
    frac = rasp.lib.make_frac_prevs(rasp.tokens == "x")
    frac("xaxa")                          # [True, 0.5, 0.666..., 0.5]  reference semantics, no BOS
    rasp.evaluate(frac, "xaxa", causal=True, vocab={"a", "x"}, max_seq_len=5)

Modules: ``rasp`` (every expression type, in one namespace as tracr has it), ``evaluator`` (default
and causal semantics, p2 §1.2), ``graph`` (the program as a DAG), ``value_sets`` (value-set
inference), ``validate`` (what compiles, p2 §1.3), ``lib`` (p2 §3) and ``cases`` (the conformance
cases, p2 §5). Pure Python + numpy, no JAX: the compiler to weights builds on these modules.
"""

from superpose.rasp import cases, evaluator, graph, lib, rasp, validate, value_sets
from superpose.rasp.evaluator import causal_evaluate, evaluate
from superpose.rasp.graph import ExprGraph, extract_graph
from superpose.rasp.rasp import *  # noqa: F403 - the language is the package's namespace
from superpose.rasp.rasp import __all__ as _rasp_all
from superpose.rasp.validate import UnsupportedProgramError, check_compilable

__all__ = [
  *_rasp_all,
  "ExprGraph",
  "UnsupportedProgramError",
  "cases",
  "causal_evaluate",
  "check_compilable",
  "evaluate",
  "evaluator",
  "extract_graph",
  "graph",
  "lib",
  "rasp",
  "validate",
  "value_sets",
]
