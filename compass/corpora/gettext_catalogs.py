"""gettext catalogs already on the machine (``/usr/share/locale/<ll>/LC_MESSAGES/*.mo``):
short UI strings in ~165 languages, parallel by (domain, msgid). English records are the msgids.

Only messages of at least ``min_chars`` characters that differ from their msgid are kept.
Messages are ordered by a hash of their parallel key — the same in every language — so capped
loads overlap across languages and are reproducible.
"""

from __future__ import annotations

import gettext
import hashlib
from collections.abc import Sequence
from pathlib import Path

from compass.core.errors import DataError
from compass.core.languages import normalize_language
from compass.core.records import TextRecord

SOURCE = "gettext"
DEFAULT_LOCALE_DIR = Path("/usr/share/locale")


def locale_dirs(locale_dir: Path = DEFAULT_LOCALE_DIR) -> dict[str, Path]:
    """Normalised language → its ``LC_MESSAGES`` folder (variants such as ``@latin`` skipped)."""
    out: dict[str, Path] = {}
    if not locale_dir.exists():
        return out
    for folder in sorted(locale_dir.iterdir()):
        messages = folder / "LC_MESSAGES"
        if "@" in folder.name or not messages.is_dir():
            continue
        try:
            code = normalize_language(folder.name)
        except Exception:
            continue
        out.setdefault(code, messages)
    return out


def _catalog(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as handle:
            translations = gettext.GNUTranslations(handle)
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    out: dict[str, str] = {}
    for key, value in translations._catalog.items():  # type: ignore[attr-defined]
        if isinstance(key, tuple):
            if key[1] != 0:
                continue
            key = key[0]
        if key and isinstance(value, str):
            out[key.split("\x04")[-1]] = value
    return out


def _order(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def load_gettext(
    languages: Sequence[str],
    *,
    locale_dir: str | Path = DEFAULT_LOCALE_DIR,
    domains: Sequence[str] | None = None,
    limit_per_language: int | None = None,
    min_chars: int = 20,
) -> list[TextRecord]:
    dirs = locale_dirs(Path(locale_dir))
    wanted = [normalize_language(code) for code in languages]
    sources = [code for code in wanted if code != "en"]
    missing = [code for code in sources if code not in dirs]
    if missing:
        raise DataError(f"no gettext catalogs for {missing} under {locale_dir}")
    if not sources and "en" in wanted:
        sources = ["de"] if "de" in dirs else list(dirs)[:1]
        if not sources:
            raise DataError(f"no gettext catalogs under {locale_dir}")
    allowed = set(domains) if domains else None
    per_language: dict[str, list[tuple[str, str, str]]] = {}
    english: dict[str, tuple[str, str]] = {}
    for code in sources:
        rows = []
        for mo in sorted(dirs[code].glob("*.mo")):
            domain = mo.stem
            if allowed is not None and domain not in allowed:
                continue
            for msgid, text in _catalog(mo).items():
                text = text.strip()
                if len(text) < min_chars or text == msgid:
                    continue
                key = f"mo:{domain}:{msgid}"
                rows.append((key, domain, text))
                english.setdefault(key, (domain, msgid))
        per_language[code] = rows
    if "en" in wanted:
        per_language["en"] = [
            (key, domain, msgid)
            for key, (domain, msgid) in english.items()
            if len(msgid) >= min_chars
        ]
    out = []
    for code in wanted:
        rows = sorted(per_language.get(code, []), key=lambda row: _order(row[0]))
        seen: set[str] = set()
        count = 0
        for key, domain, text in rows:
            if text in seen:
                continue
            seen.add(text)
            out.append(TextRecord(f"{key}@{code}", code, text, SOURCE, domain, key))
            count += 1
            if limit_per_language is not None and count >= limit_per_language:
                break
    return out
