"""Language tags: parse and canonicalise BCP-47 tags with ``langcodes``, in one place.

Events carry BCP-47 tags as real clients send them (``pt_BR``, ``zh-Hant-TW``, ``iw-IL`` from
Android and Java, ``fil-PH``, ``ca-ES-valencia``). :func:`normalize_language` turns each into the
one canonical form every layer (storage included) uses, so one language never has two names:

- deprecated and grandfathered subtags become their current ones (``iw`` → ``he``, ``in`` →
  ``id``, ``ji`` → ``yi``, ``mo`` → ``ro``, ``zh-min-nan`` → ``nan``);
- ISO 639-2/3 codes become their two-letter form where one exists (``eng`` → ``en``, ``fre`` →
  ``fr``), and an individual language inside a macrolanguage its macrolanguage (``swh`` →
  ``sw``, ``cmn`` → ``zh``, ``arb`` → ``ar``);
- case is fixed and redundant scripts dropped (``ZH-hant-tw`` → ``zh-Hant-TW``, ``en-Latn`` →
  ``en``); scripts, regions and variants are kept (``yue-Hant-HK``, ``es-419``);
- anything else raises :class:`~compass.core.errors.UnknownLanguageError` with the reason: a
  malformed tag, an unregistered subtag (``xx``), a code that names no language (``und``,
  ``mul``, ``zxx``, ``mis``, private use ``qaa``–``qtz``), extensions or private-use parts
  (``en-u-ca-gregory``, ``en-x-foo``: they would split one language's usage in two).

``langcodes`` reads the IANA subtag registry from its own package on first use (no network).
"""

from __future__ import annotations

from functools import lru_cache

from langcodes import Language, LanguageTagError, standardize_tag

from compass.core.errors import UnknownLanguageError

MAX_TAG_CHARS = 64
"""Longer strings are not language tags (and are never parsed)."""

_NOT_A_LANGUAGE = frozenset({"und", "mul", "zxx", "mis"})

# The ISO 639-3 code URIEL uses, where it differs from (or is more specific than) the tag's own
# three-letter form: URIEL describes individual languages (``arb``, not the macrolanguage ``ara``).
ISO3_BY_ISO1: dict[str, str] = {
    "af": "afr", "am": "amh", "ar": "arb", "az": "azj", "be": "bel", "bg": "bul", "bn": "ben",
    "bs": "bos", "ca": "cat", "cs": "ces", "cy": "cym", "da": "dan", "de": "deu", "dz": "dzo",
    "el": "ell", "en": "eng", "eo": "epo", "es": "spa", "et": "est", "eu": "eus", "fa": "pes",
    "fi": "fin", "fr": "fra", "ga": "gle", "gl": "glg", "gu": "guj", "ha": "hau", "he": "heb",
    "hi": "hin", "hr": "hrv", "hu": "hun", "hy": "hye", "id": "ind", "ig": "ibo", "is": "isl",
    "it": "ita", "ja": "jpn", "ka": "kat", "kk": "kaz", "km": "khm", "kn": "kan", "ko": "kor",
    "ky": "kir", "lo": "lao", "lt": "lit", "lv": "lvs", "mg": "plt", "mk": "mkd", "ml": "mal",
    "mn": "khk", "mr": "mar", "ms": "zsm", "my": "mya", "nb": "nob", "ne": "npi", "nl": "nld",
    "nn": "nno", "no": "nob", "om": "gaz", "pa": "pan", "pl": "pol", "ps": "pbt", "pt": "por",
    "ro": "ron", "ru": "rus", "si": "sin", "sk": "slk", "sl": "slv", "so": "som", "sq": "als",
    "sr": "srp", "sv": "swe", "sw": "swh", "ta": "tam", "te": "tel", "th": "tha", "tl": "tgl",
    "fil": "tgl", "tr": "tur", "uk": "ukr", "ur": "urd", "uz": "uzn", "vi": "vie", "xh": "xho",
    "yo": "yor", "zh": "cmn", "zu": "zul",
}  # fmt: skip


@lru_cache(maxsize=4096)
def normalize_language(code: str) -> str:
    """The canonical BCP-47 form of ``code`` (see the module docstring), e.g. ``iw-IL`` →
    ``he-IL``, ``pt_br`` → ``pt-BR``, ``swh`` → ``sw``; raises
    :class:`~compass.core.errors.UnknownLanguageError` saying why a tag is refused."""
    if not isinstance(code, str) or not code.strip():
        raise UnknownLanguageError("language code is empty")
    raw = code.strip()
    if len(raw) > MAX_TAG_CHARS or not raw.isascii():
        raise UnknownLanguageError(f"{code[:MAX_TAG_CHARS]!r} is not a BCP-47 language tag")
    try:
        tag = standardize_tag(raw, macro=True)
        parsed = Language.get(tag, normalize=False)
    except (LanguageTagError, ValueError, KeyError) as exc:
        raise UnknownLanguageError(
            f"{code!r} is not a BCP-47 language tag (e.g. 'sw', 'pt-BR'): {exc}"
        ) from None
    language = parsed.language or ""
    if parsed.extensions or parsed.private or language.startswith("x-"):
        raise UnknownLanguageError(
            f"{code!r} has extension or private-use subtags; send the language, script, region "
            "and variants only"
        )
    if not language or language in _NOT_A_LANGUAGE or "qaa" <= language <= "qtz":
        raise UnknownLanguageError(f"{code!r} names no particular language")
    if not parsed.is_valid():
        raise UnknownLanguageError(f"unknown language {code!r}: a subtag is not registered")
    return tag


def primary_subtag(code: str) -> str:
    """``pt-BR`` → ``pt``, ``yue-Hant-HK`` → ``yue``: the part that decides the URIEL language
    and the data we can find."""
    return normalize_language(code).split("-")[0]


def iso639_3(code: str) -> str:
    """The ISO 639-3 code URIEL uses for ``code`` (``ar`` → ``arb``, ``yue`` → ``yue``);
    raises :class:`~compass.core.errors.UnknownLanguageError` when there is none."""
    primary = primary_subtag(code)
    if primary in ISO3_BY_ISO1:
        return ISO3_BY_ISO1[primary]
    try:
        alpha3 = Language.get(primary).to_alpha3()
    except (LookupError, ValueError):
        alpha3 = ""
    if len(alpha3) != 3:
        raise UnknownLanguageError(f"no ISO 639-3 mapping for {code!r}")
    return alpha3
