"""Language codes: normalise BCP-47 tags and know which primary languages exist.

Events carry BCP-47 tags (``pt-BR``, ``zh-Hant-TW``, ``sw``). We keep the canonical form of the
whole tag (language lower-case, script title-case, region upper-case) because adapters can be
regional, and check the primary subtag against ISO 639 so that typos fail loudly instead of
silently creating a new language.
"""

from __future__ import annotations

import re
from functools import lru_cache

from compass.core.errors import UnknownLanguageError

# ISO 639-1 codes (all 183) — the primary subtags we accept without a 3-letter fallback.
_ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy
    da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu
    hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb
    lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om
    or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw
    ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh
    zu""".split()
)

# ISO 639-3 codes we map to a 2-letter code where one exists (URIEL uses 639-3).
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
    "tr": "tur", "uk": "ukr", "ur": "urd", "uz": "uzn", "vi": "vie", "xh": "xho", "yo": "yor",
    "zh": "cmn", "zu": "zul",
}  # fmt: skip

_TAG = re.compile(
    r"^(?P<lang>[A-Za-z]{2,3})"
    r"(?:[-_](?P<script>[A-Za-z]{4}))?"
    r"(?:[-_](?P<region>[A-Za-z]{2}|\d{3}))?$"
)


@lru_cache(maxsize=4096)
def normalize_language(code: str) -> str:
    """Return the canonical BCP-47 form of ``code`` or raise :class:`UnknownLanguageError`.

    ``pt_br`` → ``pt-BR``, ``ZH-hant-tw`` → ``zh-Hant-TW``. Three-letter primary subtags are
    accepted when they are ISO 639-3 codes we know (e.g. ``swh``), and mapped to their two-letter
    form so one language never gets two names.
    """
    if not isinstance(code, str) or not code.strip():
        raise UnknownLanguageError("language code is empty")
    match = _TAG.match(code.strip())
    if match is None:
        raise UnknownLanguageError(f"{code!r} is not a BCP-47 language tag (e.g. 'sw', 'pt-BR')")
    lang = match["lang"].lower()
    if len(lang) == 3:
        two = {v: k for k, v in ISO3_BY_ISO1.items()}.get(lang)
        if two is None:
            raise UnknownLanguageError(f"unknown language {code!r}")
        lang = two
    if lang not in _ISO_639_1:
        raise UnknownLanguageError(f"unknown language {code!r} (primary subtag {lang!r})")
    parts = [lang]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    return "-".join(parts)


def primary_subtag(code: str) -> str:
    """``pt-BR`` → ``pt``: the part that decides the URIEL language and the data we can find."""
    return normalize_language(code).split("-")[0]


def iso639_3(code: str) -> str:
    """The ISO 639-3 code URIEL uses for ``code``; raises when we have no mapping."""
    primary = primary_subtag(code)
    try:
        return ISO3_BY_ISO1[primary]
    except KeyError:
        raise UnknownLanguageError(f"no ISO 639-3 mapping for {code!r}") from None
