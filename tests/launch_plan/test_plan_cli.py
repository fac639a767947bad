"""launch.plan's command line (one-line errors, before any subprocess) and its HLO reading."""

from __future__ import annotations

import pytest

from launch import plan
from launch import plan_report as rep


@pytest.mark.parametrize(
  "argv,message",
  [
    (["--config", "configs/lm/scale.py:9b", "--devices", "8"], "unknown variant '9b'"),
    (["--config", "configs/lm/nope.py", "--devices", "8"], "does not exist"),
    (
      ["--config", "configs/lm/scale.py:125m", "--devices", "8", "--ici", "3,-1,1"],
      "not divisible by 3",
    ),
    (
      ["--config", "configs/lm/scale.py:125m", "--devices", "8", "--ici", "1,2"],
      "expected three sizes",
    ),
    (
      ["--config", "configs/lm/scale.py:125m", "--devices", "9", "--slices", "2"],
      "not divisible by --slices=2",
    ),
    (
      ["--config", "configs/lm/scale.py:125m", "--devices", "8", "--config.train.nope=1"],
      "config.train.nope",
    ),
    (
      ["--config", "configs/lm/scale.py:125m", "--devices", "8", "--bogus"],
      "unexpected arguments: --bogus",
    ),
    (["--devices", "8"], "--config and --devices are required"),
    (
      [
        "--config",
        "configs/lm/scale.py:125m",
        "--devices",
        "8",
        "--config.trainer=projects.nope.train",
      ],
      "config.trainer='projects.nope.train' cannot be imported",
    ),
  ],
)
def test_plan_bad_input_is_one_line(capsys, argv, message):
  assert plan.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_plan_mesh_resolution():
  config = plan.load_config("configs/lm/scale.py:8b_2slice")
  assert plan.resolve_mesh(config, 512, None, None, None) == ((1, 64, 4), (2, 1, 1), 2)
  assert plan.resolve_mesh(config, 512, 2, "1,-1,8", None) == ((1, 32, 8), (2, 1, 1), 2)
  one = plan.load_config("configs/lm/scale.py:8b")
  assert plan.resolve_mesh(one, 512, 2, None, None) == (
    (1, 64, 4),
    (2, 1, 1),
    2,
  )  # --slices: data over DCN
  assert (
    plan.load_config("configs/lm/scale.py:125m", ["--config.train.seq_len=128"]).train.seq_len
    == 128
  )


HLO = """HloModule jit_step, entry_computation_layout={}

%add (x: f32[], y: f32[]) -> f32[] {
  ROOT %a = f32[] add(f32[] %x, f32[] %y)
}

%body (p: (s32[], f32[64,32])) -> (s32[], f32[64,32]) {
  %p = (s32[], f32[64,32]) parameter(0)
  %w = f32[64,32]{1,0} get-tuple-element(%p), index=1
  %ag = f32[64,128]{1,0} all-gather(%w), channel_id=1, replica_groups=[2,4]<=[8], dimensions={1}, use_global_device_ids=true
  %ar = f32[64,32]{1,0} all-reduce(%w), channel_id=2, replica_groups={{0,4},{1,5},{2,6},{3,7}}, use_global_device_ids=true, to_apply=%add
  ROOT %t = (s32[], f32[64,32]) tuple(%i, %ar)
}

%cond (p: (s32[], f32[64,32])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[64,32]) -> f32[64,32] {
  %a = f32[64,32]{1,0} parameter(0)
  %wl = (s32[], f32[64,32]) while(%tup), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  %cp = bf16[16]{0} collective-permute(%x), channel_id=3, source_target_pairs={{0,1},{1,0}}
  ROOT %r = f32[64,32]{1,0} get-tuple-element(%wl), index=1
}
"""  # noqa: E501 (compiler output, one instruction per line)


def test_plan_hlo_collectives_count_loops_and_slices():
  rows = rep.collectives(HLO, list(range(8)), devices_per_slice=4, f32_as_bf16=True)
  by = {r["kind"]: r for r in rows}
  ag, ar, cp = by["all-gather"], by["all-reduce"], by["collective-permute"]
  assert (
    ag["count"] == 12
    and ag["group"] == 4
    and ag["bytes"] == 64 * 128 * 4
    and ag["network"] == "ici"
  )
  assert (
    ag["traffic"] == pytest.approx(12 * 3 / 4 * 64 * 128 * 4)
    and ag["traffic_bf16"] == ag["traffic"] / 2
  )
  assert ar["count"] == 12 and ar["group"] == 2 and ar["network"] == "dcn"  # {0,4}: two slices
  assert ar["traffic"] == pytest.approx(12 * 2 * 1 / 2 * 64 * 32 * 4)
  assert cp["count"] == 1 and cp["bytes"] == 32 and cp["traffic_bf16"] == 32
  total = rep.summarise(rows)["total"]
  assert total["dcn_traffic"] == ar["traffic"] and total["count"] == 25
  est = rep.estimate(1e12, rows, bf16=True)["v5p"]
  assert est["compute_s"] == pytest.approx(1e12 / 459e12)
  assert est["slow_bytes"] == ar["traffic_bf16"] and est["step_s_serial"] > est["step_s_overlap"]


def test_plan_fit_table_figures():
  assert {k: c.hbm_gib for k, c in rep.CHIPS.items()} == {
    "v4": 32,
    "v5e": 16,
    "v5p": 95,
    "v6e": 32,
    "h100": 80,
    "h200": 141,
  }
  assert {k: c.peak_tflops for k, c in rep.CHIPS.items()} == {
    "v4": 275,
    "v5e": 197,
    "v5p": 459,
    "v6e": 918,
    "h100": 989,
    "h200": 989,
  }
  f = rep.fits(40 * rep.GiB)
  assert f["v5p"]["fits"] and not f["v5e"]["fits"] and not f["v4"]["fits"] and f["h100"]["fits"]


def test_plan_hlo_mesh_replica_groups_split_ici_and_dcn():
  """XLA's mesh format; a group of 8 over 2 slices of 4: ICI ring inside each slice, DCN on a
  quarter."""
  attrs = (
    "replica_groups=mesh['axis_0'=1,'axis_1'=4,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_1'}, "
    "use_global_device_ids=true"
  )
  assert rep._groups(attrs, 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
  both = attrs.replace("{'axis_1'}", "{'axis_1','axis_2'}")
  assert sorted(rep._groups(both, 8)[0]) == list(range(8))
  text = HLO.replace("replica_groups=[2,4]<=[8]", both.removesuffix(", use_global_device_ids=true"))
  ag = next(
    r
    for r in rep.collectives(text, list(range(8)), devices_per_slice=4)
    if r["kind"] == "all-gather"
  )
  size = 64 * 128 * 4
  assert ag["group"] == 8 and ag["slices"] == 2 and ag["network"] == "dcn"
  assert ag["ici_traffic"] == pytest.approx(12 * 3 / 4 * size) and ag[
    "dcn_traffic"
  ] == pytest.approx(12 * 1 / 2 * size / 4)


def test_plan_spmd_warnings_are_attributed_to_jobs():
  err = (
    f"{plan._MARK}0\nW spmd_partitioner.cc] [SPMD] Involuntary full rematerialization. The "
    "compiler cannot go "
    f"from A to B. As the last resort, SPMD will replicate\n{plan._MARK}1\nother line\n"
  )
  assert plan._spmd_warnings(err, 2) == [
    ["Involuntary full rematerialization. The compiler cannot go from A to B."],
    [],
  ]
