"""The ICL task families: formats, answers against independent computations, seeding, exact
mixing."""

import json
import re
import string

import numpy as np
import pytest

from projects.icl_superposition import chars, tables, tasks

LINE_RE = {
  "retrieval": re.compile(r"^([A-Za-z]{8})>([A-Za-z])$"),
  "mod_add": re.compile(r"^(\d)>(\d)$"),
  "add_translate": re.compile(r"^(\d{2})\+(\d{2})->([^\n]+)$"),
  "AB": re.compile(r"^(\d{2})@(\d{2})=(\d{2,3})$"),
  "country": re.compile(r"^([A-Za-z][^\n>]*)->([^\n]+)$"),
  "word": re.compile(r"^([a-z]+)->([A-Za-z])$"),
}
LANG = {"add_or": "or", "add_en": "en", "add_fr": "fr", "add_es": "es"}


def _expected(task, x, raw):
  """The answer computed without the module: int arithmetic and the JSON tables read here."""
  if task.family == "retrieval":
    return x[int(task.name.removeprefix("retrieve"))]
  if task.family == "mod_add":
    return str((int(x) + int(task.name.removeprefix("plus"))) % 10)
  if task.family == "add_translate":
    a, b = map(int, x.split("+"))
    return raw[f"{LANG[task.name]}_dict"][str(a + b)]
  if task.family == "AB":
    a, b = map(int, x.split("@"))
    return {"copyA": str(a), "copyB": str(b), "AplusB": str(a + b)}[task.name]
  if task.family == "country":
    return {
      "country_capital": raw["country_capital_dict"].get(x),
      "country_continent": raw["country_continent_dict"].get(x),
      "country_upper": x.upper(),
    }[task.name]
  return {
    "first_letter": x[0].lower(),
    "last_letter": x[-1].lower(),
    "first_letter_cap": x[0].upper(),
    "last_letter_cap": x[-1].upper(),
  }[task.name]


def test_registry_shape():
  assert [len(tasks.FAMILIES[f].tasks) for f in tasks.FAMILIES] == [8, 10, 4, 3, 3, 4]
  assert len(tasks.TASKS) == 32
  assert tasks.FAMILIES["retrieval"].test_pair == ("retrieve2", "retrieve6")
  assert all(t.family == name for name, f in tasks.FAMILIES.items() for t in f.tasks)
  assert {f: tasks.FAMILIES[f].n_examples for f in tasks.LLM_FAMILIES} == {
    "add_translate": 80,
    "AB": 60,
    "country": 60,
    "word": 80,
  }  # 20·K, as the paper configs


@pytest.mark.parametrize("family", tasks.FROM_SCRATCH)
def test_from_scratch_examples(family):
  rng = np.random.default_rng(0)
  for task in tasks.FAMILIES[family].tasks:
    for _ in range(50):
      x, y = task.example(rng)
      m = LINE_RE[family].match(task.line(x).rstrip("\n"))
      assert m and m.group(2) == y == _expected(task, x, None)
      if family == "retrieval":
        assert len(set(x)) == 8 and set(x) <= set(string.ascii_letters)


def test_retrieval_uses_both_cases():
  rng = np.random.default_rng(1)
  seen = "".join(tasks.TASKS["retrieve0"].example(rng)[0] for _ in range(200))
  assert set(seen) == set(string.ascii_letters)


@pytest.mark.parametrize("family", tasks.LLM_FAMILIES)
def test_llm_family_prompts(family, icl_tables):
  fam = tasks.FAMILIES[family]
  for seed in range(3):
    p = tasks.family_prompt(family, np.random.default_rng(seed))
    lines = p.text.split("\n")
    assert len(lines) == fam.n_examples + 1 and p.examples and len(p.examples) == fam.n_examples
    for line, (x, y), label in zip(lines[:-1], p.examples, p.labels):
      m = LINE_RE[family].match(line)
      assert m, line
      task = fam.tasks[label]
      assert m.group(1) == x.split(task.sep)[0].split("+")[0].split("@")[0]
      assert line == f"{x}{task.sep}{y}" and y == _expected(task, x, icl_tables)
    assert lines[-1] == p.query_text == p.query + fam.tasks[0].sep
    assert p.answers == tuple(_expected(t, p.query, icl_tables) for t in fam.tasks)
    assert len(set(p.answers)) == len(p.answers)  # every task answers differently
    assert p.query not in {x for x, _ in p.examples}  # a fresh query
    assert np.bincount(p.labels).tolist() == [fam.n_examples // len(fam.tasks)] * len(fam.tasks)


def test_operand_ranges_and_words(icl_tables):
  rng = np.random.default_rng(3)
  ops = [tasks.TASKS["copyA"].example(rng)[0] for _ in range(2000)]
  vals = np.array([list(map(int, x.split("@"))) for x in ops])
  assert vals.min() == 10 and vals.max() == 99
  words = [tasks.TASKS["first_letter"].example(rng)[0] for _ in range(200)]
  assert all(w[0] != w[-1] for w in words)
  countries = {tasks.TASKS["country_upper"].example(rng)[0] for _ in range(2000)}
  assert countries <= set(icl_tables["country_capital_dict"]) and len(countries) > 150
  assert set(icl_tables["country_capital_dict"]) == set(icl_tables["country_continent_dict"])


def test_number_words_spot_checks(icl_tables):
  t = tasks.TASKS
  assert [t[n].answer("34+34") for n in ("add_or", "add_en", "add_fr", "add_es")] == [
    "68",
    "sixty-eight",
    "soixante-huit",
    "sesenta y ocho",
  ]  # the spec's example
  assert t["add_en"].answer("60+61") == "one hundred and twenty-one"  # British "and"
  for a, b in [(10, 10), (99, 99), (45, 27), (80, 17)]:
    for name, lang in LANG.items():
      assert t[name].answer(f"{a}+{b}") == icl_tables[f"{lang}_dict"][str(a + b)]
  assert t["add_or"].answer("99+99") == "198"
  assert t["country_capital"].answer("France") == "Paris"
  assert t["country_continent"].answer("Japan") == "Asia"
  assert t["country_upper"].answer("New Zealand") == "NEW ZEALAND"


@pytest.mark.parametrize("pair", [("retrieve2", "retrieve6"), ("plus3", "plus8")])
def test_mixed_prompt_fractions_exact(pair):
  a, b = pair
  for n in (100, 37, 7):
    for d in np.round(np.linspace(0, 1, 11), 1):
      p = tasks.mixed_prompt(a, b, n, float(d), np.random.default_rng(int(10 * d)))
      n_b = int(np.floor((1 - d) * n + 1e-9))  # d is the share of task a
      assert p.labels.count(1) == n_b and p.labels.count(0) == n - n_b
      assert p.tasks == (a, b)
      ta, tb = tasks.TASKS[a], tasks.TASKS[b]
      assert p.answers == (ta.answer(p.query), tb.answer(p.query)) and p.answers[0] != p.answers[1]
      for (x, y), label in zip(p.examples, p.labels):
        assert y == (tb if label else ta).answer(x)
      assert p.text.endswith("\n" + p.query + ">")
      if a.startswith("retrieve"):
        assert p.query not in {x for x, _ in p.examples} and len(set(p.query)) == 8


def test_mixed_prompt_is_shuffled():
  p = tasks.mixed_prompt("plus1", "plus2", 100, 0.5, np.random.default_rng(0))
  assert p.labels != tuple(sorted(p.labels))


def test_example_counts_follow_remainder_rule():
  assert tasks.example_counts([1 / 3] * 3, 10) == [4, 3, 3]
  assert tasks.example_counts([0.7, 0.3], 100) == [70, 30]
  assert tasks.example_counts([0.71, 0.29], 100) == [71, 29]
  with pytest.raises(ValueError):
    tasks.example_counts([0.5, 0.6], 10)


def test_determinism_per_seed():
  for a, b in [("retrieve2", "retrieve6"), ("plus0", "plus9")]:
    p1 = tasks.mixed_prompt(a, b, 100, 0.3, np.random.default_rng(42))
    p2 = tasks.mixed_prompt(a, b, 100, 0.3, np.random.default_rng(42))
    p3 = tasks.mixed_prompt(a, b, 100, 0.3, np.random.default_rng(43))
    assert p1 == p2 and p1.text != p3.text
  s1 = tasks.single_task_prompt("retrieve5", 100, np.random.default_rng(7))
  assert s1 == tasks.single_task_prompt("retrieve5", 100, np.random.default_rng(7))
  assert set(s1.labels) == {0} and s1.answers == (s1.query[5],)


def test_llm_determinism(icl_tables):
  for fam in tasks.LLM_FAMILIES:
    assert tasks.family_prompt(fam, np.random.default_rng(5)) == tasks.family_prompt(
      fam, np.random.default_rng(5)
    )


def test_mixing_rejects_bad_arguments():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError):
    tasks.mixed_prompt("retrieve2", "plus3", 10, 0.5, rng)  # different families
  with pytest.raises(ValueError):
    tasks.mixed_prompt("retrieve2", "retrieve2", 10, 0.5, rng)
  with pytest.raises(ValueError):
    tasks.mixed_prompt("retrieve2", "retrieve6", 10, 1.5, rng)
  with pytest.raises(ValueError):
    tasks.get_task("nope")


def test_sampling_and_skew():
  assert tasks.skewed_weights("retrieval", 0.9) == pytest.approx([0.225] * 4 + [0.025] * 4)
  assert sum(tasks.skewed_weights("mod_add", 0.1)) == pytest.approx(1.0)
  rng = np.random.default_rng(0)
  ks = [
    int(tasks.sample_task("retrieval", rng, tasks.skewed_weights("retrieval")).name[-1])
    for _ in range(2000)
  ]
  assert 0.87 < np.mean(np.array(ks) < 4) < 0.93


def test_char_vocabulary_roundtrip_and_mask():
  vocab = chars.VOCAB
  assert vocab.vocab_size == 99 and vocab.pad_id == 0 and len(set(chars.CHARACTERS)) == 96
  p = tasks.single_task_prompt("retrieve2", 100, np.random.default_rng(0))
  ids = chars.encode_prompt(p.text)
  assert len(ids) == len(p.text) == 100 * 11 + 9 and vocab.decode(ids) == p.text
  assert chars.encode_prompt(p.text, bos=True)[0] == vocab.bos_id
  lines = [(x, ">", y) for x, y in p.examples]
  ids, mask = chars.encode_lines(lines, bos=True)
  assert len(ids) == len(mask) == 1 + 100 * 11 and mask.sum() == 200
  assert vocab.decode(ids[mask == 1]) == "".join(y + "\n" for _, y in p.examples)
  from superpose.data import tokenizers

  assert tokenizers.get_tokenizer("icl_chars") is vocab


def test_tables_dir_configurable(tmp_path, monkeypatch):
  (tmp_path / "en_dict.json").write_text(json.dumps({str(i): f"n{i}" for i in range(200)}))
  tables.set_tables_dir(tmp_path)
  try:
    assert tasks.TASKS["add_en"].answer("10+11") == "n21"
  finally:
    tables.set_tables_dir(None)
  monkeypatch.setenv("SUPERPOSE_ICL_TABLES", str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="icl_tables"):
    tables.number_word(5, "fr")
