"""Language tags: canonical BCP-47 via langcodes, deprecated codes mapped, the rest refused."""

from __future__ import annotations

import pytest

from compass.core.errors import UnknownLanguageError
from compass.core.languages import iso639_3, normalize_language, primary_subtag


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [
        # deprecated codes Android and Java still send
        ("iw-IL", "he-IL"), ("in-ID", "id-ID"), ("ji", "yi"), ("iw", "he"), ("mo", "ro"),
        # scripts, regions and variants kept as themselves
        ("fil-PH", "fil-PH"), ("yue-Hant-HK", "yue-Hant-HK"), ("ca-ES-valencia", "ca-ES-valencia"),
        ("es-419", "es-419"), ("sr-Latn-RS", "sr-Latn-RS"),
        # ISO 639-2/3 to two letters where one exists; individual languages to their macrolanguage
        ("eng", "en"), ("fre", "fr"), ("fra", "fr"), ("swh", "sw"), ("cmn", "zh"), ("arb", "ar"),
        # case, separators, redundant scripts, grandfathered tags
        ("pt_br", "pt-BR"), ("ZH-hant-tw", "zh-Hant-TW"), ("en-Latn", "en"), ("zh-min-nan", "nan"),
    ],
)  # fmt: skip
def test_tags_real_clients_send_are_canonicalised(sent: str, canonical: str) -> None:
    assert normalize_language(sent) == canonical
    assert normalize_language(canonical) == canonical  # idempotent


@pytest.mark.parametrize(
    ("tag", "why"),
    [
        ("", "empty"), ("xx", "not registered"), ("english", "not a BCP-47"),
        ("fr-", "not a BCP-47"),
        ("123", "not registered"), ("qqq", "no particular language"), ("und", "no particular"),
        ("mul", "no particular"), ("en-x-foo", "private-use"), ("en-u-ca-gregory", "extension"),
        ("x-klingon", "private-use"), ("de-1996-1996", "not registered"), ("fr\x00", "BCP-47"),
        ("a" * 200, "BCP-47"), ("fr-FR-ü", "BCP-47"),
    ],
)  # fmt: skip
def test_anything_else_is_refused_with_the_reason(tag: str, why: str) -> None:
    with pytest.raises(UnknownLanguageError, match=why):
        normalize_language(tag)


def test_primary_subtag_and_uriel_codes() -> None:
    assert primary_subtag("yue-Hant-HK") == "yue"
    assert primary_subtag("iw-IL") == "he"
    assert iso639_3("ar-EG") == "arb"  # URIEL's individual language, not the macrolanguage
    assert iso639_3("he-IL") == "heb"
    assert iso639_3("fil-PH") == "tgl"
    assert iso639_3("yue-Hant-HK") == "yue"  # not in the table: langcodes' own 639-3 code
    assert iso639_3("ca-ES-valencia") == "cat"
