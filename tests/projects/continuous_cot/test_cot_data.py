"""ProsQA data: generator statistics, BFS answers, id shuffling, prompt layout, disjointness, the
CLI."""

import json
import random

import pytest

from projects.continuous_cot import data, graphs


@pytest.fixture(scope="module")
def generated():
  rng = random.Random(123)
  return [graphs.generate_problem(rng) for _ in range(400)]


def test_generator_statistics_close_to_the_paper(generated):
  stats = graphs.statistics(generated)
  for key, paper in graphs.PAPER_STATS.items():
    assert abs(stats[key] - paper) <= 0.1 * paper, (key, stats[key], paper)
  assert set(stats["hops"]) <= {3, 4, 5, 6} and stats["nodes_range"][1] <= graphs.MAX_NODES


def test_generator_is_seeded_and_reproducible():
  a = [graphs.generate_problem(random.Random(5)) for _ in range(3)]
  b = [graphs.generate_problem(random.Random(5)) for _ in range(3)]
  assert a == b
  assert graphs.generate_problem(random.Random(6)) != a[0]


def test_bfs_answers_agree_with_files_and_a_second_reference(generated, released):
  for problems in (generated, *released.values()):
    for p in problems:
      p.check()  # target reached by BFS, neg_target not
      closure = graphs.transitive_reachable(p)
      assert p.target in closure and p.neg_target not in closure
      assert closure == p.reachable_within(p.num_nodes)
  assert [p.hops for p in released["graph4"]] == [p.hops for p in released["graph4_shuffled"]]
  assert {p.hops for p in released["graph4"]} == {3, 4}


def test_three_four_hop_subset_is_the_released_graph4(released):
  subset = [p for p in released["valid"] if p.hops in (3, 4)]
  assert [(p.edges, p.root, p.target) for p in subset] == [
    (p.edges, p.root, p.target) for p in released["graph4"]
  ]


def test_released_ids_leak_order_and_shuffling_removes_it_keeping_answers(released):
  assert all(s < t for p in released["graph4"] for s, t in p.edges)
  assert not all(s < t for p in released["graph4_shuffled"] for s, t in p.edges)
  rng = random.Random(0)
  for p in released["graph4"][:100]:
    q = graphs.shuffle_ids(p, rng)
    q.check()
    assert q.hops == p.hops and q.num_shortest_paths() == p.num_shortest_paths()
    assert len(q.reachable_within(2)) == len(p.reachable_within(2))
    assert graphs.graph_hash(q) == graphs.graph_hash(p)
  # The released shuffled file is the same graphs relabelled.
  assert [graphs.graph_hash(p) for p in released["graph4"]] == [
    graphs.graph_hash(p) for p in released["graph4_shuffled"]
  ]


def test_prompt_layout_token_exact_on_a_released_example(released):
  p = released["graph4"][0]  # 'Tom' = 1 is the root; target 16, neg 13
  tokens = data.prompt_tokens(p)
  m = len(p.edges)
  assert len(tokens) == 3 * m + 5
  assert tokens[:7] == [38, 0, 2, 34, 1, 3, 34]  # <eos> 0 2 | 1 3 |
  s, t = p.edges[-1]
  assert tokens[-10:] == [*p.edges[-2], 34, s, t, 35, 16, 13, 36, 1]
  # The RS-repo string recipe, encoded by the 40-token vocabulary, gives the same ids.
  text = (
    "<eos> "
    + "|".join(f" {a} {b} " for a, b in p.edges).strip()
    + " [Q] "
    + f"{p.target} {p.neg_target}"
    + " [R] "
    + str(p.root)
  )
  assert data.VOCAB.encode(text) == tokens
  assert tokens[-5:] == [35, 16, 13, 36, 1]  # ... sm tm [Q] 16 13 [R] 1 (no | before [Q])
  assert data.render(tokens).startswith("<eos> 0 2 | 1 3 |") and data.render(tokens).endswith(
    f"{s} {t} [Q] 16 13 [R] 1"
  )
  theory = data.prompt_tokens(p, layout="theory")
  assert len(theory) == 3 * m + 6 and theory[-6] == 34
  question = data.question_tokens(p, 3, with_answer=True)
  assert question[len(tokens) :] == [33, 33, 33, 37, 16]
  shuffled = data.prompt_tokens(p, rng=random.Random(1))
  assert sorted(shuffled) == sorted(tokens) and shuffled != tokens
  assert data.VOCAB.vocab_size == 40 and data.VOCAB.decode_symbols(
    [30, 33, 34, 35, 36, 37, 38]
  ) == ["30", "<|latent|>", "|", "[Q]", "[R]", "[A]", "<eos>"]


def test_neighbor_k_matches_the_released_field(shared_data, released):
  records = json.loads((shared_data / "prosqa" / data.RELEASED["graph4_shuffled"]).read_text())
  for record, p in zip(records[:50], released["graph4_shuffled"]):
    assert {int(k): sorted(v) for k, v in record["neighbor_k"].items()} == p.neighbor_k()


def test_generated_splits_disjoint_from_released_and_each_other(released):
  exclude = {graphs.graph_hash(p) for ps in released.values() for p in ps}
  train, train_hashes = data.generate_split(60, 0, exclude=exclude)
  valid, valid_hashes = data.generate_split(30, 1, exclude=exclude | train_hashes)
  assert len(train_hashes) == 60 and len(valid_hashes) == 30
  assert not (train_hashes | valid_hashes) & exclude and not train_hashes & valid_hashes
  assert {p.hops for p in train + valid} <= {3, 4}
  # A released graph offered to the generator's filter is rejected.
  assert graphs.graph_hash(graphs.shuffle_ids(released["valid"][0], random.Random(3))) in exclude


def test_cli_generate_and_stats(tmp_path, shared_data, capsys):
  out = tmp_path / "gen"
  assert (
    data.main(
      [
        "generate",
        "--out",
        str(out),
        "--train",
        "40",
        "--valid",
        "10",
        "--test",
        "10",
        "--stats-graphs",
        "50",
        "--data",
        str(shared_data / "prosqa"),
      ]
    )
    == 0
  )
  text = capsys.readouterr().out
  assert "paper (Coconut Table 2)" in text and "released prosqa_valid.json" in text
  train = data.load(out / "train.json")
  assert (
    len(train) == 40
    and json.loads((out / "stats.json").read_text())["generated train"]["count"] == 40
  )
  record = json.loads((out / "valid.json").read_text())[0]
  assert set(record) >= {
    "question",
    "answer",
    "steps",
    "idx_to_symbol",
    "edges",
    "root",
    "target",
    "neg_target",
    "neighbor_k",
  }
  assert len(record["steps"]) == len(record["neighbor_k"]) - 1
  assert data.main(["stats", "--file", str(out / "train.json")]) == 0
  assert "train.json" in capsys.readouterr().out
