"""LibreOffice help (Debian ``libreoffice-help-<ll>``): exactly paragraph-parallel text in 34
languages, topics by module (swriter, scalc, ...).

Every paragraph has an id (``par_id…``/``hd_id…``) shared by all languages, so
``parallel_key = lo:<page>#<id>``. Untranslated paragraphs fall back to English in the package;
they are dropped (``text == English text``) so that a "German" record is German. Pages are read in
an order fixed by a hash of their path — the same in every language, so capped loads still
overlap across languages and reruns return the same records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from compass.core.errors import DataError
from compass.core.records import TextRecord
from compass.corpora.folders import language_folders, open_languages, require_languages
from compass.corpora.html_text import id_paragraphs

SOURCE = "libreoffice-help"


def help_dir(root: Path) -> Path:
    return Path(root) / "usr" / "share" / "libreoffice" / "help"


def _help_code(code: str) -> str:
    return "en" if code == "en-US" else code


def _has_text(folder: Path) -> bool:
    return (folder / "text").is_dir()


def language_dirs(root: Path) -> dict[str, Path]:
    """Normalised language code → its help folder (``en-US`` counts as ``en``)."""
    return language_folders(help_dir(root), key=_help_code, accept=_has_text)


def _page_order(folder: Path) -> list[str]:
    pages = [p.relative_to(folder).as_posix() for p in (folder / "text").rglob("*.html")]
    return sorted(pages, key=lambda rel: hashlib.sha1(rel.encode()).hexdigest())


def _read(folder: Path, rel: str) -> list[tuple[str, str]]:
    path = folder / rel
    if not path.exists():
        return []
    return id_paragraphs(path.read_text(encoding="utf-8", errors="replace"))


def load_libreoffice_help(
    root: str | Path,
    languages: Sequence[str],
    *,
    limit_per_language: int | None = None,
    min_chars: int = 20,
    drop_untranslated: bool = True,
    dedupe: bool = True,
) -> list[TextRecord]:
    """Paragraphs of the unpacked help under ``root`` (see :mod:`compass.corpora.debian`)."""
    dirs = language_dirs(Path(root))
    wanted = require_languages(
        languages, dirs, corpus="LibreOffice help", where=help_dir(Path(root))
    )
    if drop_untranslated and "en" not in dirs and any(code != "en" for code in wanted):
        raise DataError(
            "the English help (libreoffice-help-en-us) is needed to drop untranslated "
            "paragraphs; run 'compass data fetch'"
        )
    english = dirs.get("en")
    pages = _page_order(english if english is not None else dirs[wanted[0]])
    records: dict[str, list[TextRecord]] = {code: [] for code in wanted}
    seen: dict[str, set[str]] = {code: set() for code in wanted}
    for rel in pages:
        still_open = open_languages(wanted, records, limit_per_language)
        if not still_open:
            break
        english_text = dict(_read(english, rel)) if english is not None else {}
        module = rel.split("/")[1] if rel.count("/") >= 2 else "shared"
        for code in still_open:
            paragraphs = english_text.items() if code == "en" else _read(dirs[code], rel)
            counts: dict[str, int] = {}
            for pid, text in paragraphs:
                counts[pid] = counts.get(pid, 0) + 1
                if len(text) < min_chars:
                    continue
                if drop_untranslated and code != "en" and english_text.get(pid) == text:
                    continue
                if dedupe and text in seen[code]:
                    continue
                seen[code].add(text)
                key = f"lo:{rel}#{pid}" + (f"~{counts[pid]}" if counts[pid] > 1 else "")
                records[code].append(
                    TextRecord(
                        id=f"{key}@{code}",
                        language=code,
                        text=text,
                        source=SOURCE,
                        topic=module,
                        parallel_key=key,
                    )
                )
                if limit_per_language is not None and len(records[code]) >= limit_per_language:
                    break
    return [record for code in wanted for record in records[code]]
