"""The lookup tables of the paper's LLM task families, read from a configurable folder, and a word
list.

The tables (number words 0..999 per language, country → capital / continent) are the official
repository's ``util/*.pt`` converted to JSON; they live in ../shared/data/icl_tables and are never
copied into this repository. The folder is, in order: ``set_tables_dir(path)``, the environment
variable ``SUPERPOSE_ICL_TABLES``, or ``../shared/data/icl_tables`` beside the repository root.
Tables are loaded on first use, so importing the task registry needs no data.

The paper drew words from the ``random-word`` package, which needs the network; ``WORDS`` is a local
substitute (common English words; the word tasks keep those whose first and last letters differ).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_TABLES = REPO_ROOT.parent / "shared" / "data" / "icl_tables"
LANGUAGES = (
  "or",
  "en",
  "fr",
  "es",
)  # "or" maps a number to its numeral; "ko" is German in the release: avoid

_tables_dir: pathlib.Path | None = None


def set_tables_dir(path: str | os.PathLike | None) -> None:
  """Points the LLM task families at another table folder (None: back to env var / default)."""
  global _tables_dir
  _tables_dir = None if path is None else pathlib.Path(path)
  _load_json.cache_clear()


def tables_dir() -> pathlib.Path:
  if _tables_dir is not None:
    return _tables_dir
  return pathlib.Path(os.environ.get("SUPERPOSE_ICL_TABLES", DEFAULT_TABLES))


@functools.lru_cache(maxsize=None)
def _load_json(path: pathlib.Path) -> dict:
  if not path.exists():
    raise FileNotFoundError(
      f"ICL table {path} not found: set_tables_dir(...) or SUPERPOSE_ICL_TABLES "
      f"must name the icl_tables folder (default {DEFAULT_TABLES})"
    )
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def table(name: str) -> dict:
  """One JSON table by stem, e.g. ``table("en_dict")`` or ``table("country_capital_dict")``."""
  return _load_json(tables_dir() / f"{name}.json")


def number_word(n: int, language: str) -> str:
  if language not in LANGUAGES:
    raise ValueError(f"language {language!r} is not one of {LANGUAGES}")
  words = table(f"{language}_dict")
  if str(n) not in words:
    raise ValueError(f"{n} is outside the {language} number table (0..{len(words) - 1})")
  return words[str(n)]


def capital(country: str) -> str:
  return table("country_capital_dict")[country]


def continent(country: str) -> str:
  return table("country_continent_dict")[country]


def countries() -> tuple[str, ...]:
  """Countries present in both the capital and the continent table, in table order."""
  cont = table("country_continent_dict")
  return tuple(c for c in table("country_capital_dict") if c in cont)


WORDS = tuple(
  """
able about above across action actor admit adult after again agent agree ahead alarm album alert
alive allow alone along alter amount anger angle animal answer apple april area argue arrive artist
aspect attack august author avoid award baby back badge baker ball band bank basic basket beach bean
bear beauty become before begin behind belt bench best better bird birth black blade blank blind
block blood board boat body bomb bond bone book border bottom brain branch brand bread break brick
bridge brief bring broad brown brush build burn butter cabin cable camp candy canvas carbon card
cargo carpet carry castle catch cause chain chair chalk change chapter charm chart cheap check chest
chief child choir circle city claim class clean clear client climb clock cloud coast coffee cold
color column comic common copper corner cotton count court cousin cover craft crowd cruel cycle
daily dance danger dark data dealer debut decade deep degree delay demand depth design desk detail
dinner direct doctor dollar domain door double draft dragon drama dream dress drink drive driver
during early earth east editor effort eight either empty energy engine entry equal error escape
event exact expert export factor family farm farmer father field fight final finger first flag
flight floor flower focus forest format found frame friend front fruit funny garden giant girl glass
global goal gold good grain grand grant grass green ground group guard guest guitar habit hand happy
harbor heart heavy height hello helmet history honey horn horse hotel human humor hunt idea image
index input island jacket joint journal judge jump junior kind king kitchen knife label ladder lamp
land laser laugh lawyer layer leader lemon letter level light limit liquid little lunch magic major
maker march market metal method middle minor mirror model moment month morning mother motor mount
mouth music napkin narrow nation nature north novel number object ocean office orange order outcome
oxygen packet paint panel paper parent party pencil people pepper period person phone piano pilot
planet plant pocket poem point police pond powder power print prison profit proof public purple
puzzle quick quiet radio random reason record region report result ribbon river robot rocket round
rubber safety sailor salad salt sample school screen season second secret sector senior server
shadow sheet shirt short signal silver singer sister small smart smoke social soft south speed
spirit spring stand start station stock storm story strong studio sugar summer sunday super table
target teacher tennis theory thing throat ticket tiger timber today token tower track travel trust
tunnel turn valley velvet victim violin visit wagon wall water weather window winter wolf wonder
world writer yellow young
""".split()
)
