"""superpose.train.profile: XLA's per-operation trace joined with the HLO, by kind and phase."""

import jax
import jax.numpy as jnp

from superpose.train import profile


def test_breakdown_names_the_matmul_and_the_phases():
  w = jax.random.normal(jax.random.key(0), (256, 256))
  x = jax.random.normal(jax.random.key(1), (64, 256))

  @jax.jit
  def step(w, x):
    loss, g = jax.value_and_grad(lambda w: jnp.tanh(jnp.einsum("bd,de->be", x, w)).sum())(w)
    return w - 0.1 * g, loss

  b = profile.breakdown(step, w, x, calls=2, advance=lambda out: (out[0], x))
  kinds = {k for k, _ in b.by}
  phases = {p for _, p in b.by}
  assert "matmul bd,de->be" in kinds, b.by
  assert {"forward", "backward"} <= phases, b.by
  assert b.wall_s > 0
  assert 0 < b.busy_s and abs(b.busy_s - b.op_s) < 1e-6
  assert b.top and b.top[0][2] >= b.top[-1][2]
  assert "| kind | ms | share |" in b.table()


def test_kinds_from_hlo():
  hlo = """HloModule m

%fused_computation (p0: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  ROOT %t = f32[4,4]{0,1} transpose(%p0), dimensions={1,0}
}

%fused_computation.1 (p0.1: f32[4,4]) -> f32[4] {
  %p0.1 = f32[4,4]{1,0} parameter(0)
  %e = f32[4,4]{1,0} exponential(%p0.1), metadata={op_name="jit(f)/jvp(softmax)/exp"}
  %c = f32[] constant(0)
  ROOT %r = f32[4]{0} reduce(%e, %c), dimensions={1}, to_apply=%add
}

ENTRY %main (a: f32[4,4]) -> f32[4] {
  %a = f32[4,4]{1,0} parameter(0)
  %copy_fusion = f32[4,4]{0,1} fusion(%a), kind=kLoop, calls=%fused_computation
  %d = f32[4,4]{1,0} dot(%a, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}, \
metadata={op_name="jit(f)/transpose(jvp(ab,bc->ac))/dot_general"}
  ROOT %s = f32[4]{0} fusion(%d), kind=kLoop, calls=%fused_computation.1
}
"""
  ops = profile.parse_hlo(hlo.replace("\\\n", ""))
  assert profile.kind(ops["copy_fusion"]) == "layout"
  assert profile.kind(ops["d"]) == "matmul ab,bc->ac"
  assert profile.phase(ops["d"]) == "backward"
  assert profile.kind(ops["s"]) == "softmax / exp"
