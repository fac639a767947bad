"""Plain text from LibreOffice help pages (HTML generated from XHP sources)."""

from __future__ import annotations

import html.parser

_BLOCK = {
  "p",
  "div",
  "h1",
  "h2",
  "h3",
  "h4",
  "h5",
  "h6",
  "li",
  "tr",
  "table",
  "ul",
  "ol",
  "pre",
  "br",
  "section",
  "article",
  "dt",
  "dd",
}
_CELL = {"td", "th"}
_SKIP = {"script", "style", "noscript", "head", "title", "button", "nav", "label"}
_VOID = {"br", "img", "input", "meta", "link", "hr", "base", "wbr"}


class _Text(html.parser.HTMLParser):
  """Collects the text of ``<div id="DisplayArea">`` (the page body, without navigation or debug
  footer). Hidden variants with a class (``MAC``, ``WRITER``, ``UNIX``...) are skipped; the
  unclassed hidden variant is the default one a browser shows after the page script ran."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.out, self.stack = [], []  # stack: (tag, skipping) for every open non-void element
    self.inside = False  # within the DisplayArea
    self.pre = 0

  def _skipping(self) -> bool:
    return bool(self.stack) and self.stack[-1][1]

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if a.get("id") == "DisplayArea":
      self.inside = True
    if a.get("id") in ("SearchFrame", "DonationFrame") or tag == "footer":
      self.inside = False
    skip = self._skipping() or tag in _SKIP or ("hidden" in a and a.get("class"))
    if tag in _BLOCK or tag in _CELL:
      self.out.append("\n" if tag in _BLOCK else " ")
    if tag == "pre":
      self.pre += 1
    if tag not in _VOID:
      self.stack.append((tag, skip))

  def handle_endtag(self, tag):
    if tag == "pre":
      self.pre = max(0, self.pre - 1)
    if tag in _BLOCK:
      self.out.append("\n")
    # Pop to the matching tag; HTML in the wild leaves some elements unclosed.
    for i in range(len(self.stack) - 1, -1, -1):
      if self.stack[i][0] == tag:
        del self.stack[i:]
        break

  def handle_data(self, data):
    if not self.inside or self._skipping():
      return
    self.out.append(data if self.pre else data.replace("\n", " "))


def html_to_text(page: str) -> str:
  """Text of the page body (navigation, scripts and the debug footer left out); a line per block
  element, table cells separated by spaces, platform/module variants reduced to the default one."""
  p = _Text()
  p.feed(page)
  p.close()
  # Code in <pre> keeps its line breaks; indentation is flattened like everything else.
  return "\n".join(" ".join(line.split()) for line in "".join(p.out).split("\n"))
