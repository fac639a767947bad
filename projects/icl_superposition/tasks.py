"""The task families of "Everything Everywhere All at Once" (spec: ../shared/papers/p4_icl.md §1.1,
§2.1).

A task maps an input string to an answer string; an in-context line is ``input + sep + answer`` and
every line, the last example included, ends in ``"\\n"``; a prompt ends with the query ``input +
sep``. That is both the from-scratch layout (``x1..x8>x_k\\n`` × 100, then ``s*>``) and the LLM
template ``{examples joined by \\n}\\n{query}``.

Families (tasks by name):
  retrieval      retrieve0..retrieve7: 8 distinct letters of a-zA-Z, ``>``, the letter at 0-based
                 position k (retrieve2 / retrieve6 are the paper's test pair
                 "copy(op2)"/"copy(op6)")
  mod_add        plus0..plus9: ``x>(x+k) mod 10`` for a digit x
  add_translate  add_or, add_en, add_fr, add_es: ``A+B->`` the sum as a numeral / English / French /
                 Spanish words (number tables), A, B uniform in 10..99
  AB             copyA, copyB, AplusB: ``A@B=`` A / B / A+B, A, B uniform in 10..99
  country        country_capital, country_continent, country_upper: ``Country->`` (country tables)
  word           first_letter, last_letter, first_letter_cap, last_letter_cap: ``word->`` a letter

Queries are drawn from the family's input distribution, never equal to an in-context input (except
in mod_add, whose 10 inputs all appear in a 100-example context), and such that the prompt's tasks
give different answers (A≠B for AB; first≠last letter for words; k_a≠k_b is implied by distinct
tasks).
"""

from __future__ import annotations

import dataclasses
import math
import string
from typing import Callable, Sequence

import numpy as np

from projects.icl_superposition import tables

LETTERS = string.ascii_letters  # the 52 letters retrieval draws from
NEWLINE = "\n"


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  family: str
  sep: str  # between input and answer: ">", "->" or "="
  sample_input: Callable[[np.random.Generator], str]
  answer_fn: Callable[[str], str]

  def answer(self, x: str) -> str:
    return self.answer_fn(x)

  def example(self, rng: np.random.Generator) -> tuple[str, str]:
    x = self.sample_input(rng)
    return x, self.answer(x)

  def line(self, x: str) -> str:
    """One in-context example with its terminator."""
    return f"{x}{self.sep}{self.answer(x)}{NEWLINE}"

  def query_text(self, x: str) -> str:
    return f"{x}{self.sep}"


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  tasks: tuple[Task, ...]
  n_examples: int  # in-context examples per prompt in the paper (100 from scratch, 20·K for LLMs)
  test_pair: tuple[str, str] | None = (
    None  # the from-scratch evaluation pair, where the spec fixes one
  )
  fresh_query: bool = (
    True  # the query input never appears in the context (impossible for 10 digits)
  )

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.tasks)


@dataclasses.dataclass(frozen=True)
class Prompt:
  text: str  # the examples, each ending in "\n", then the query input and separator
  query: str  # the query input (without the separator)
  tasks: tuple[str, ...]  # task names, aligned with answers
  answers: tuple[str, ...]  # the query's answer under each task
  examples: tuple[tuple[str, str], ...]  # in-context (input, answer) pairs, in prompt order
  labels: tuple[int, ...]  # which of ``tasks`` produced each in-context example

  @property
  def query_text(self) -> str:
    return self.text[self.text.rfind(NEWLINE) + 1 :]


# ---- inputs --------------------------------------------------------------------------------------


def _letters8(rng: np.random.Generator) -> str:
  return "".join(LETTERS[i] for i in rng.choice(len(LETTERS), size=8, replace=False))


def _digit(rng: np.random.Generator) -> str:
  return str(int(rng.integers(10)))


def _operands(symbol: str, low: int = 10, high: int = 99) -> Callable[[np.random.Generator], str]:
  def sample(rng):
    a, b = rng.integers(low, high + 1, size=2)  # inclusive, as U[10,99] in the spec
    return f"{int(a)}{symbol}{int(b)}"

  return sample


def _split(x: str, symbol: str) -> tuple[int, int]:
  a, b = x.split(symbol)
  return int(a), int(b)


def _country(rng: np.random.Generator) -> str:
  names = tables.countries()
  return names[int(rng.integers(len(names)))]


_WORDS = tuple(w for w in tables.WORDS if w[0] != w[-1])


def _word(rng: np.random.Generator) -> str:
  return _WORDS[int(rng.integers(len(_WORDS)))]


# ---- families ------------------------------------------------------------------------------------


def _retrieval() -> Family:
  tasks = tuple(
    Task(f"retrieve{k}", "retrieval", ">", _letters8, lambda x, k=k: x[k]) for k in range(8)
  )
  return Family("retrieval", tasks, n_examples=100, test_pair=("retrieve2", "retrieve6"))


def _mod_add() -> Family:
  tasks = tuple(
    Task(f"plus{k}", "mod_add", ">", _digit, lambda x, k=k: str((int(x) + k) % 10))
    for k in range(10)
  )
  return Family("mod_add", tasks, n_examples=100, fresh_query=False)


def _add_translate() -> Family:
  def answer(language):
    return lambda x: tables.number_word(sum(_split(x, "+")), language)

  tasks = tuple(
    Task(f"add_{lang}", "add_translate", "->", _operands("+"), answer(lang))
    for lang in tables.LANGUAGES
  )
  return Family("add_translate", tasks, n_examples=80)


def _ab() -> Family:
  fns = {
    "copyA": lambda x: str(_split(x, "@")[0]),
    "copyB": lambda x: str(_split(x, "@")[1]),
    "AplusB": lambda x: str(sum(_split(x, "@"))),
  }
  tasks = tuple(Task(name, "AB", "=", _operands("@"), fn) for name, fn in fns.items())
  return Family("AB", tasks, n_examples=60)


def _country_family() -> Family:
  fns = {
    "country_capital": tables.capital,
    "country_continent": tables.continent,
    "country_upper": str.upper,
  }
  tasks = tuple(Task(name, "country", "->", _country, fn) for name, fn in fns.items())
  return Family("country", tasks, n_examples=60)


def _word_family() -> Family:
  fns = {
    "first_letter": lambda w: w[0].lower(),
    "last_letter": lambda w: w[-1].lower(),
    "first_letter_cap": lambda w: w[0].upper(),
    "last_letter_cap": lambda w: w[-1].upper(),
  }
  tasks = tuple(Task(name, "word", "->", _word, fn) for name, fn in fns.items())
  return Family("word", tasks, n_examples=80)


FAMILIES: dict[str, Family] = {
  f.name: f
  for f in (_retrieval(), _mod_add(), _add_translate(), _ab(), _country_family(), _word_family())
}
TASKS: dict[str, Task] = {t.name: t for f in FAMILIES.values() for t in f.tasks}
FROM_SCRATCH = ("retrieval", "mod_add")
LLM_FAMILIES = ("add_translate", "AB", "country", "word")


def get_task(task: Task | str) -> Task:
  if isinstance(task, Task):
    return task
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
  return TASKS[task]


# ---- prompts -------------------------------------------------------------------------------------


def example_counts(fractions: Sequence[float], n_examples: int) -> list[int]:
  """Exact per-task counts: floor(frac·N) each (a 1e-9 guard against float error), the rounding
  remainder given one by one to the tasks in order (the official ``config.parse`` rule)."""
  if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
    raise ValueError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
  counts = [int(math.floor(f * n_examples + 1e-9)) for f in fractions]
  for i in range(n_examples - sum(counts)):
    counts[i % len(counts)] += 1
  return counts


def _query(
  tasks: Sequence[Task], used: set[str], rng: np.random.Generator, max_tries: int = 10_000
) -> str:
  for _ in range(max_tries):
    x = tasks[0].sample_input(rng)
    answers = [t.answer(x) for t in tasks]
    if x not in used and len(set(answers)) == len(answers):
      return x
  raise RuntimeError(
    f"no query for {[t.name for t in tasks]} outside the context with distinct answers"
  )


def multi_task_prompt(
  tasks: Sequence[Task | str],
  fractions: Sequence[float],
  n_examples: int,
  rng: np.random.Generator,
  query_absent: bool = False,
) -> Prompt:
  """A prompt whose examples come from ``tasks`` in exact proportions ``fractions``, in random
  order; the query (new input, distinct answers across the tasks) is answered by every task.

  ``query_absent``: the query is drawn first and no in-context example has its input (a control for
  ``mod_add``, whose 10 inputs otherwise all appear in a long context, so copying a matching line
  answers)."""
  tasks = [get_task(t) for t in tasks]
  if len({t.family for t in tasks}) != 1:
    raise ValueError(
      f"tasks {[t.name for t in tasks]} come from different families; they cannot share a query"
    )
  if len(fractions) != len(tasks):
    raise ValueError(f"{len(tasks)} tasks but {len(fractions)} fractions")
  counts = example_counts(fractions, n_examples)
  labels = np.repeat(np.arange(len(tasks)), counts)
  labels = labels[rng.permutation(len(labels))]
  if query_absent:
    query = _query(tasks, set(), rng)
    examples = tuple(_example_without(tasks[int(i)], query, rng) for i in labels)
  else:
    examples = tuple(tasks[int(i)].example(rng) for i in labels)
    fresh = FAMILIES[tasks[0].family].fresh_query if tasks[0].family in FAMILIES else True
    query = _query(tasks, {x for x, _ in examples} if fresh else set(), rng)
  text = "".join(f"{x}{tasks[0].sep}{y}{NEWLINE}" for x, y in examples) + tasks[0].query_text(query)
  return Prompt(
    text=text,
    query=query,
    tasks=tuple(t.name for t in tasks),
    answers=tuple(t.answer(query) for t in tasks),
    examples=examples,
    labels=tuple(int(i) for i in labels),
  )


def _example_without(
  task: Task, x_out: str, rng: np.random.Generator, max_tries: int = 10_000
) -> tuple[str, str]:
  for _ in range(max_tries):
    x, y = task.example(rng)
    if x != x_out:
      return x, y
  raise RuntimeError(f"{task.name}: no input other than {x_out!r}")


def single_task_prompt(task: Task | str, n_examples: int, rng: np.random.Generator) -> Prompt:
  return multi_task_prompt([task], [1.0], n_examples, rng)


def mixed_prompt(
  task_a: Task | str, task_b: Task | str, n_examples: int, d: float, rng: np.random.Generator
) -> Prompt:
  """floor((1 − d)·N) examples from task b (float-guarded), the rest (≈ d·N) from task a, shuffled;
  ``answers == (answer_a, answer_b)``. d is the share of task a (task 0), as in ``calibrate``. (The
  from-scratch code drew each example's task independently; exact counts remove that noise from the
  calibration curve.)"""
  if not 0.0 <= d <= 1.0:
    raise ValueError(f"mixing fraction d must lie in [0, 1], got {d}")
  if get_task(task_a).name == get_task(task_b).name:
    raise ValueError("mixed_prompt needs two different tasks")
  return multi_task_prompt([task_a, task_b], [d, 1.0 - d], n_examples, rng)


def family_prompt(
  family: Family | str,
  rng: np.random.Generator,
  n_examples: int | None = None,
  fractions: Sequence[float] | None = None,
) -> Prompt:
  """The paper's LLM prompt for a family: all its tasks, uniform unless ``fractions`` is given."""
  fam = FAMILIES[family] if isinstance(family, str) else family
  k = len(fam.tasks)
  return multi_task_prompt(fam.tasks, fractions or [1.0 / k] * k, n_examples or fam.n_examples, rng)


def sample_task(
  family: Family | str, rng: np.random.Generator, weights: Sequence[float] | None = None
) -> Task:
  """One task of the family (a training sequence's hidden parameter), uniform or by ``weights``."""
  fam = FAMILIES[family] if isinstance(family, str) else family
  p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
  return fam.tasks[int(rng.choice(len(fam.tasks), p=p))]


def skewed_weights(family: Family | str, p_first_half: float = 0.9) -> list[float]:
  """The 9010 / 1090 training skew: probability p on the first half of the tasks, uniform within
  halves."""
  fam = FAMILIES[family] if isinstance(family, str) else family
  n = len(fam.tasks)
  half = n // 2
  return [p_first_half / half] * half + [(1.0 - p_first_half) / (n - half)] * (n - half)
