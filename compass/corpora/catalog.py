"""One entry point for every corpus: ``load_corpus(name_or_path, languages, ...)``.

Names: ``libreoffice`` (LibreOffice help), ``debian-handbook``, ``gettext``, ``chatterbot``;
anything else is a user's JSONL/Parquet file. The Debian corpora are read from
``<data_dir>/corpora/root`` where ``compass data fetch`` unpacked them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from compass.core.errors import DataError
from compass.core.records import TextRecord, read_records
from compass.corpora.chatterbot import load_chatterbot
from compass.corpora.debian import unpacked_root
from compass.corpora.gettext_catalogs import gettext_locale_dir, load_gettext
from compass.corpora.handbook import load_debian_handbook
from compass.corpora.libreoffice import load_libreoffice_help

CORPORA = ("libreoffice", "debian-handbook", "gettext", "chatterbot")


def load_corpus(
    name: str,
    languages: Sequence[str] | None,
    *,
    data_dir: str | Path = ".data",
    limit_per_language: int | None = None,
    locale_dir: str | Path | None = None,
) -> list[TextRecord]:
    """Records of corpus ``name`` (or the records file at path ``name``) for ``languages``."""
    if name in ("libreoffice", "libreoffice-help", "debian-handbook", "gettext") and not languages:
        raise DataError(f"corpus {name!r} needs a list of languages")
    langs = list(languages or [])
    if name in ("libreoffice", "libreoffice-help"):
        return load_libreoffice_help(
            unpacked_root(data_dir), langs, limit_per_language=limit_per_language
        )
    if name == "debian-handbook":
        return load_debian_handbook(
            unpacked_root(data_dir), langs, limit_per_language=limit_per_language
        )
    if name == "gettext":
        where = locale_dir if locale_dir is not None else gettext_locale_dir(data_dir)
        return load_gettext(langs, locale_dir=where, limit_per_language=limit_per_language)
    if name == "chatterbot":
        return load_chatterbot(langs or None, limit_per_language=limit_per_language)
    path = Path(name)
    if not path.exists():
        raise DataError(f"{name!r} is neither a corpus ({', '.join(CORPORA)}) nor a file")
    records = read_records(path)
    if langs:
        from compass.core.languages import normalize_language

        keep = {normalize_language(code) for code in langs}
        records = [r for r in records if r.language in keep]
    if limit_per_language is not None:
        counts: dict[str, int] = {}
        capped = []
        for record in records:
            counts[record.language] = counts.get(record.language, 0) + 1
            if counts[record.language] <= limit_per_language:
                capped.append(record)
        records = capped
    return records
