"""Loaders on the real corpora: user files, chatterbot-corpus, gettext catalogs and — when the
Debian packages can be fetched — LibreOffice help and the Debian handbook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compass.core.errors import DataError
from compass.corpora import (
    TextRecord,
    fetch_packages,
    load_chatterbot,
    load_corpus,
    load_debian_handbook,
    load_gettext,
    load_libreoffice_help,
    read_manifest,
    read_records,
    unpacked_root,
    write_records,
)
from compass.corpora.debian import extract_deb, libreoffice_package, packages_for


# ---------------------------------------------------------------------------- user files
def test_jsonl_and_parquet_round_trip(tmp_path: Path) -> None:
    records = [
        TextRecord("a", "de", "Guten Morgen", "mine", "greetings", "k1"),
        TextRecord("b", "pt-BR", "Bom dia", "mine", None, "k1"),
    ]
    for name in ("records.jsonl", "records.parquet"):
        path = write_records(records, tmp_path / name)
        assert read_records(path) == records
    assert read_records(tmp_path / "records.jsonl", language="pt_br") == records[1:]
    assert read_records(tmp_path / "records.jsonl", limit=1) == records[:1]


def test_minimal_rows_get_stable_ids_and_normalised_languages(tmp_path: Path) -> None:
    path = tmp_path / "target.jsonl"
    path.write_text(
        json.dumps({"text": "Habari za asubuhi", "language": "SW"})
        + "\n\n"
        + json.dumps({"text": "Bom dia", "language": "pt_br", "topic": ""})
        + "\n"
    )
    first, again = read_records(path), read_records(path)
    assert first == again
    assert [r.language for r in first] == ["sw", "pt-BR"]
    assert first[0].source == "target" and first[1].topic is None and len(first[0].id) == 24


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "hi"}\n', "language"),
        ('{"text": "", "language": "de"}\n', "non-empty"),
        ('{"text": "hi", "language": "xx"}\n', "unknown language"),
        ("not json\n", "not valid JSON"),
        ("[1, 2]\n", "JSON object"),
    ],
)
def test_bad_rows_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine", "language": "de"}\n' + content)
    with pytest.raises(DataError, match=message) as info:
        read_records(path)
    assert "bad.jsonl:2" in str(info.value)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("text,language\n")
    with pytest.raises(DataError, match="unsupported"):
        read_records(tmp_path / "x.csv")
    with pytest.raises(DataError, match="neither a corpus"):
        load_corpus("no-such-corpus", ["de"])


# ---------------------------------------------------------------------------- chatterbot
def test_chatterbot_is_deterministic_and_spans_topics() -> None:
    records = load_chatterbot(["en", "de"], limit_per_language=40)
    assert records == load_chatterbot(["en", "de"], limit_per_language=40)
    english = [r for r in records if r.language == "en"]
    assert len(english) == 40 and len({r.topic for r in english}) >= 10
    assert all(r.parallel_key is None and r.source == "chatterbot-corpus" for r in records)
    assert len({r.text for r in english}) == 40
    with pytest.raises(DataError):
        load_chatterbot(["sw"])


# ---------------------------------------------------------------------------- gettext
def test_gettext_messages_are_parallel_by_msgid() -> None:
    records = load_gettext(["en", "de", "fr"], limit_per_language=300, min_chars=20)
    assert records == load_gettext(["en", "de", "fr"], limit_per_language=300, min_chars=20)
    by_key: dict[str, dict[str, str]] = {}
    for record in records:
        assert len(record.text) >= 20 and record.parallel_key is not None
        by_key.setdefault(record.parallel_key, {})[record.language] = record.text
    shared = [v for v in by_key.values() if len(v) == 3]
    assert len(shared) >= 30  # the hash order is the same in every language
    for texts in shared:
        assert texts["de"] != texts["en"] and texts["fr"] != texts["en"]
        assert texts["en"] in next(k for k, v in by_key.items() if v is texts)
    with pytest.raises(DataError, match="no gettext catalogs"):
        load_gettext(["de"], locale_dir="/nonexistent")


# ---------------------------------------------------------------------------- Debian corpora
@pytest.fixture(scope="session")
def debian_data_dir(cache_dir: Path) -> Path:
    """LibreOffice help (en, de) and the Debian handbook, fetched once into the test cache."""
    data_dir = cache_dir / "method-data"
    if shutil.which("apt-get") is None and not (data_dir / "corpora" / "manifest.json").exists():
        pytest.skip("apt-get is unavailable and the Debian corpora were not fetched before")
    try:
        fetch_packages(data_dir, packages_for(["de"]))
    except DataError as exc:
        pytest.skip(f"Debian packages cannot be fetched here: {exc}")
    return data_dir


def test_fetch_records_provenance_and_licences(debian_data_dir: Path) -> None:
    manifest = read_manifest(debian_data_dir)
    assert {"libreoffice-help-en-us", "libreoffice-help-de", "debian-handbook"} <= set(manifest)
    handbook = manifest["debian-handbook"]
    assert "CC-BY-SA" in handbook.licence and len(handbook.sha256) == 64
    assert (unpacked_root(debian_data_dir) / handbook.copyright_file).exists()
    assert manifest["libreoffice-help-de"].licence.startswith("MPL-2.0")


def test_libreoffice_help_is_parallel_and_drops_untranslated_paragraphs(
    debian_data_dir: Path,
) -> None:
    root = unpacked_root(debian_data_dir)
    records = load_libreoffice_help(root, ["en", "de"], limit_per_language=400)
    assert records == load_libreoffice_help(root, ["en", "de"], limit_per_language=400)
    english = {r.parallel_key: r.text for r in records if r.language == "en"}
    german = [r for r in records if r.language == "de"]
    assert len(german) == 400
    assert {r.topic for r in german} <= {
        "sbasic", "scalc", "schart", "sdatabase", "sdraw", "shared", "simpress", "smath",
        "swriter",
    }  # fmt: skip
    assert all(english.get(r.parallel_key) != r.text for r in german)
    assert sum(r.parallel_key in english for r in german) >= 200
    kept_all = load_libreoffice_help(
        root, ["en", "de"], limit_per_language=400, drop_untranslated=False
    )
    english_all = {r.parallel_key: r.text for r in kept_all if r.language == "en"}
    assert any(
        english_all.get(r.parallel_key) == r.text for r in kept_all if r.language == "de"
    )  # the package really falls back to English; the default drops those


def test_debian_handbook_paragraphs(debian_data_dir: Path) -> None:
    root = unpacked_root(debian_data_dir)
    records = load_debian_handbook(root, ["en", "de", "ja"], limit_per_language=100)
    by_language: dict[str, list[TextRecord]] = {}
    for record in records:
        by_language.setdefault(record.language, []).append(record)
    assert {k: len(v) for k, v in by_language.items()} == {"en": 100, "de": 100, "ja": 100}
    english = {r.parallel_key: r.text for r in by_language["en"]}
    assert all(len(r.text) >= 40 for r in records)
    assert all(english.get(r.parallel_key) != r.text for r in by_language["de"])
    assert (
        load_corpus("debian-handbook", ["de"], data_dir=debian_data_dir, limit_per_language=5)
        == by_language["de"][:5]
    )


def test_missing_language_and_missing_fetch_are_clear(
    debian_data_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match="compass data fetch"):
        load_libreoffice_help(unpacked_root(debian_data_dir), ["ko"])
    with pytest.raises(DataError, match="compass data fetch"):
        load_libreoffice_help(unpacked_root(tmp_path), ["de"])
    with pytest.raises(DataError, match="no LibreOffice help package"):
        libreoffice_package("sw")


def test_pure_python_deb_extraction_matches_dpkg(debian_data_dir: Path, tmp_path: Path) -> None:
    deb = next((debian_data_dir / "corpora" / "debs").glob("libreoffice-help-de_*.deb"))
    extract_deb(deb, tmp_path / "dpkg")
    from compass.corpora import debian

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(debian.shutil, "which", lambda name: None)
        extract_deb(deb, tmp_path / "python")
    files = sorted(p.relative_to(tmp_path / "dpkg") for p in (tmp_path / "dpkg").rglob("*.html"))
    again = sorted(
        p.relative_to(tmp_path / "python") for p in (tmp_path / "python").rglob("*.html")
    )
    assert files == again and len(files) > 2000


def test_fetch_without_apt_gives_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compass.corpora import debian

    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get is not available"):
        fetch_packages(tmp_path, ["libreoffice-help-de"])
    assert read_manifest(tmp_path) == {}
