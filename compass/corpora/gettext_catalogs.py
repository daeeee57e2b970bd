"""gettext catalogs (``<root>/usr/share/locale/<ll>/LC_MESSAGES/*.mo``): short UI strings in
many languages, parallel by (domain, msgid). English records are the msgids.

The catalogs COMPASS reads are not whatever happens to be installed: :func:`fetch_gettext`
downloads the Debian packages of :data:`GETTEXT_PACKAGES` (``apt-get download``) and unpacks
only their catalogs and copyright files under ``<data_dir>/corpora/root`` (see
:mod:`compass.corpora.debian`), and :func:`load_gettext` reads that folder by default
(:func:`gettext_locale_dir`). ``compass data fetch --gettext`` and ``compass demo`` fetch them.

Only messages of at least ``min_chars`` characters that differ from their msgid are kept.
Messages are ordered by a hash of their parallel key — the same in every language — so capped
loads overlap across languages and are reproducible.
"""

from __future__ import annotations

import gettext
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from compass.core.errors import DataError
from compass.core.languages import normalize_language
from compass.core.records import TextRecord

SOURCE = "gettext"
SYSTEM_LOCALE_DIR = Path("/usr/share/locale")
DEFAULT_LOCALE_DIR = SYSTEM_LOCALE_DIR  # kept for callers that name the system folder
GETTEXT_PACKAGES: dict[str, tuple[str, ...]] = {
    "git": ("git",),
    "coreutils": ("coreutils",),
    "postgresql-15": ("postgres-15",),
    "iso-codes": ("iso_3166-1", "iso_4217", "iso_639-2", "iso_15924"),
    "xkb-data": ("xkeyboard-config",),
}
"""Debian package → the gettext domains (catalog names) it ships that COMPASS reads."""


def gettext_locale_dir(data_dir: str | Path) -> Path:
    """Where :func:`fetch_gettext` puts the catalogs (``<data_dir>/corpora/root/...``)."""
    from compass.corpora.debian import unpacked_root

    return unpacked_root(data_dir) / "usr" / "share" / "locale"


def _catalog_member(package: str) -> Callable[[str], bool]:
    """Members to unpack: the package's catalogs of the listed domains, and its copyright."""
    names = {f"{domain}.mo" for domain in GETTEXT_PACKAGES.get(package, ())}

    def keep(name: str) -> bool:
        name = name.removeprefix("./")
        if name == f"usr/share/doc/{package}/copyright":
            return True
        return name.startswith("usr/share/locale/") and (
            name.rsplit("/", 1)[-1] in names if names else name.endswith(".mo")
        )

    return keep


def fetch_gettext(data_dir: str | Path, packages: Sequence[str] | None = None) -> Path:
    """Download the packages of :data:`GETTEXT_PACKAGES` (or ``packages``) with ``apt-get
    download`` and unpack their ``.mo`` catalogs and copyright files; idempotent. Returns the
    locale folder to read. Raises :class:`DataError` with the reason (no apt-get, no package
    lists: run ``apt-get update``) when a package cannot be fetched."""
    from compass.corpora.debian import fetch_packages

    names = list(packages or GETTEXT_PACKAGES)
    fetch_packages(data_dir, names, keep={name: _catalog_member(name) for name in names})
    return gettext_locale_dir(data_dir)


def default_locale_dir() -> Path:
    """``COMPASS_GETTEXT_DIR``, else the fetched catalogs under ``COMPASS_DATA_DIR``."""
    from compass.config import load_settings

    settings = load_settings()
    return settings.gettext_dir or gettext_locale_dir(settings.data_dir)


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
    locale_dir: str | Path | None = None,
    domains: Sequence[str] | None = None,
    limit_per_language: int | None = None,
    min_chars: int = 20,
) -> list[TextRecord]:
    """Records of ``languages`` from the catalogs under ``locale_dir`` (default: the fetched
    ones, :func:`default_locale_dir`), only of ``domains`` when given.

    Raises :class:`DataError` naming the folder and ``compass data fetch --gettext`` when a
    language has no catalogs there."""
    if locale_dir is None:
        locale_dir = default_locale_dir()
    dirs = locale_dirs(Path(locale_dir))
    wanted = [normalize_language(code) for code in languages]
    sources = [code for code in wanted if code != "en"]
    missing = [code for code in sources if code not in dirs]
    if missing:
        raise DataError(
            f"no gettext catalogs for {missing} under {locale_dir}; run "
            "'compass data fetch --gettext' (or pass the folder that holds them)"
        )
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
