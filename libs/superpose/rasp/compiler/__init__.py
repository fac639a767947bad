"""RASP → ``superpose.nn.Transformer`` weights (p2 §2): ``compile_rasp`` returns a
``CompiledModel``.

Modules: ``bases`` (labelled directions, sparse blocks), ``blocks`` (the weight constructions),
``piecewise`` (the MLP of a numerical→numerical function: piecewise-linear through the input's grid,
accurate in float32 on fine grids), ``allocate`` (layer allocation), ``assemble`` (config + params),
``compile`` (the pipeline), ``model`` (``CompiledModel``: encode/decode/apply, save/load, the
residual basis).
"""

from superpose.rasp.compiler.compile import compile_rasp
from superpose.rasp.compiler.model import CompiledModel

__all__ = ["CompiledModel", "compile_rasp"]
