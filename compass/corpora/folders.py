"""The steps shared by the corpus loaders that read one folder per language (LibreOffice help,
the Debian handbook): find the language folders, check the requested languages against them,
and know which languages still want records under a per-language cap.

Folder names are outside input, so they are normalised here, at the edge; a folder whose name is
no language tag (``common``, ``images``) is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from compass.core.errors import DataError, UnknownLanguageError
from compass.core.languages import normalize_language


def _same(code: str) -> str:
    return code


def _any(folder: Path) -> bool:
    return True


def language_folders(
    base: Path,
    *,
    key: Callable[[str], str] = _same,
    accept: Callable[[Path], bool] = _any,
) -> dict[str, Path]:
    """Canonical language code → folder for the sub-folders of ``base`` (``{}`` when ``base``
    does not exist), read in name order.

    ``key`` maps the canonical code to the one the loader files the folder under (``en-US`` →
    ``en``); where two folders get the same key, the later name wins. ``accept`` skips folders
    that lack the loader's content."""
    out: dict[str, Path] = {}
    if not base.exists():
        return out
    for folder in sorted(base.iterdir()):
        if not accept(folder):
            continue
        try:
            code = normalize_language(folder.name)
        except UnknownLanguageError:
            continue
        out[key(code)] = folder
    return out


def require_languages(
    languages: Sequence[str], available: Mapping[str, Path], *, corpus: str, where: Path
) -> list[str]:
    """The requested codes, normalised, in the order given.

    Raises :class:`DataError` naming the ``corpus``, the folder ``where`` it was looked for and
    the fetch command when some have no folder in ``available``, and
    :class:`~compass.core.errors.UnknownLanguageError` for a code that is no language."""
    wanted = [normalize_language(code) for code in languages]
    missing = [code for code in wanted if code not in available]
    if missing:
        raise DataError(
            f"{corpus} for {missing} is not under {where}; run "
            f"'compass data fetch --languages {','.join(missing)}' (have: {sorted(available)})"
        )
    return wanted


def open_languages(
    wanted: Sequence[str], loaded: Mapping[str, Sequence[object]], limit: int | None
) -> list[str]:
    """The codes of ``wanted`` that have fewer than ``limit`` records in ``loaded`` (all of
    them without a limit)."""
    return [code for code in wanted if limit is None or len(loaded[code]) < limit]
