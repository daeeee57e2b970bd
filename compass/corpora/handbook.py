"""The Debian Administrator's Handbook (Debian ``debian-handbook``): real prose in 26 languages,
parallel by (section file, paragraph index). Paragraphs left in English in a translation are
dropped; topics are the handbook's section files."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from compass.core.errors import DataError
from compass.core.records import TextRecord
from compass.corpora.folders import language_folders, open_languages, require_languages
from compass.corpora.html_text import class_divs

SOURCE = "debian-handbook"


def handbook_dir(root: Path) -> Path:
    return Path(root) / "usr" / "share" / "doc" / "debian-handbook" / "html"


_KEEP_REGION = frozenset({"pt-BR", "zh-CN", "zh-TW"})


def _handbook_code(code: str) -> str:
    return code if code in _KEEP_REGION else code.split("-")[0]


def language_dirs(root: Path) -> dict[str, Path]:
    """Normalised code → folder; ``de-DE`` is ``de`` (the region is the translators' default),
    but ``pt-BR``, ``zh-CN`` and ``zh-TW`` keep theirs."""
    return language_folders(handbook_dir(Path(root)), key=_handbook_code)


def _section_topic(name: str) -> str:
    stem = name.removesuffix(".html")
    return stem.removeprefix("sect.")


def load_debian_handbook(
    root: str | Path,
    languages: Sequence[str],
    *,
    limit_per_language: int | None = None,
    min_chars: int = 40,
    drop_untranslated: bool = True,
) -> list[TextRecord]:
    """Paragraphs of at least ``min_chars`` of the unpacked handbook under ``root``, grouped by
    language in the order of ``languages``; raises :class:`DataError` when a language or the
    English folder is missing (run ``compass data fetch``)."""
    dirs = language_dirs(Path(root))
    wanted = require_languages(
        languages, dirs, corpus="the Debian handbook", where=handbook_dir(Path(root))
    )
    english = dirs.get("en")
    if english is None:
        raise DataError("the Debian handbook's English folder is missing; re-run data fetch")
    files = sorted(
        (p.name for p in english.glob("*.html")),
        key=lambda name: hashlib.sha1(name.encode()).hexdigest(),
    )
    out: dict[str, list[TextRecord]] = {code: [] for code in wanted}
    for name in files:
        still_open = open_languages(wanted, out, limit_per_language)
        if not still_open:
            break
        english_paras = class_divs((english / name).read_text(encoding="utf-8"))
        for code in still_open:
            path = dirs[code] / name
            if not path.exists():
                continue
            paras = english_paras if code == "en" else class_divs(path.read_text("utf-8"))
            aligned = len(paras) == len(english_paras)
            for index, text in enumerate(paras):
                if len(text) < min_chars:
                    continue
                if drop_untranslated and code != "en" and aligned and text == english_paras[index]:
                    continue
                key = f"dh:{name}#{index}"
                out[code].append(
                    TextRecord(
                        id=f"{key}@{code}",
                        language=code,
                        text=text,
                        source=SOURCE,
                        topic=_section_topic(name),
                        parallel_key=key if aligned else None,
                    )
                )
                if limit_per_language is not None and len(out[code]) >= limit_per_language:
                    break
    return [record for code in wanted for record in out[code]]
