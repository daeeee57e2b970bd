"""``is_visibly_empty`` (the ``empty_text`` rule) takes a shortcut for ASCII; it must still say
exactly what its definition says — Unicode general categories — for every code point, alone and
inside a text."""

from __future__ import annotations

import sys
import unicodedata

from compass.core.edge import INVISIBLE_LETTERS, is_visibly_empty

INVISIBLE_CATEGORIES = {"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Mn", "Me"}  # the docstring's list


def _invisible(c: str) -> bool:
    return c.isspace() or c in INVISIBLE_LETTERS or unicodedata.category(c) in INVISIBLE_CATEGORIES


def test_every_code_point_is_judged_by_its_category() -> None:
    wrong = [
        hex(i) for i in range(sys.maxunicode + 1) if is_visibly_empty(chr(i)) != _invisible(chr(i))
    ]
    assert wrong == []


def test_a_text_is_empty_only_when_every_character_is_invisible() -> None:
    assert is_visibly_empty("")
    assert is_visibly_empty(" \t\n\u200b\u2060\ufeff\u3164\x7f\x00")
    for visible in ("a", "!", "~", "é", "字", "\u0301a"):
        assert not is_visibly_empty(" \u200b" + visible + "\u200b ")
    assert is_visibly_empty("\u0301\u20dd")  # combining marks with no base (Mn, Me)
