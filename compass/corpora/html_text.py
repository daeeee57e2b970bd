"""Tiny HTML readers for the two Debian corpora (stdlib ``html.parser``, no dependencies)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SPACE = re.compile(r"\s+")
_BLOCK_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "td", "li", "div"})
_VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr"})


def clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


class _IdParagraphs(HTMLParser):
    """Text of elements whose ``id`` starts with one of ``prefixes`` (LibreOffice help)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__(convert_charrefs=True)
        self.prefixes = prefixes
        self.items: list[tuple[str, str]] = []
        self._stack: list[tuple[str, str, list[str]]] = []  # (tag, id, text parts)
        self._depth: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        if self._stack:
            self._depth[-1] += 1 if tag == self._stack[-1][0] else 0
        ident = dict(attrs).get("id") or ""
        if tag in _BLOCK_TAGS and ident.startswith(self.prefixes) and not self._stack:
            self._stack.append((tag, ident, []))
            self._depth.append(0)

    def handle_endtag(self, tag: str) -> None:
        if not self._stack or tag != self._stack[-1][0]:
            return
        if self._depth[-1] > 0:
            self._depth[-1] -= 1
            return
        _, ident, parts = self._stack.pop()
        self._depth.pop()
        self.items.append((ident, clean("".join(parts))))

    def handle_data(self, data: str) -> None:
        if self._stack:
            self._stack[-1][2].append(data)


class _ClassDivs(HTMLParser):
    """Text of every ``<div class="para">`` (Debian handbook), nested divs included."""

    def __init__(self, css_class: str) -> None:
        super().__init__(convert_charrefs=True)
        self.css_class = css_class
        self.items: list[str] = []
        self._parts: list[str] | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "div":
            return
        if self._parts is not None:
            self._depth += 1
        elif (dict(attrs).get("class") or "").split() == [self.css_class]:
            self._parts = []
            self._depth = 0

    def handle_endtag(self, tag: str) -> None:
        if tag != "div" or self._parts is None:
            return
        if self._depth:
            self._depth -= 1
            return
        self.items.append(clean("".join(self._parts)))
        self._parts = None

    def handle_data(self, data: str) -> None:
        if self._parts is not None:
            self._parts.append(data)


def id_paragraphs(
    html: str, prefixes: tuple[str, ...] = ("par_id", "hd_id")
) -> list[tuple[str, str]]:
    parser = _IdParagraphs(prefixes)
    parser.feed(html)
    parser.close()
    return parser.items


def class_divs(html: str, css_class: str = "para") -> list[str]:
    parser = _ClassDivs(css_class)
    parser.feed(html)
    parser.close()
    return parser.items
