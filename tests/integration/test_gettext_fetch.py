"""The gettext catalogs the demo and tests read come from the project's own fetch, never from
whatever happens to be installed under /usr/share/locale (issue 16, part 3).

Real ``apt-get download`` (the test session's fixture already fetched the packages into the
test cache; their ``.deb`` files are reused here so this runs offline), real unpacking.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compass.core.errors import DataError
from compass.corpora.debian import corpora_dir, read_manifest
from compass.corpora.gettext_catalogs import (
    GETTEXT_PACKAGES,
    fetch_gettext,
    gettext_locale_dir,
    load_gettext,
)
from compass.lab.scenario import SECOND_SHIFT_TOPICS, SHIFTED_TOPICS, STABLE_TOPICS
from tests.fixtures import TEST_CACHE


def _reuse_debs(data_dir: Path) -> None:
    debs = corpora_dir(data_dir) / "debs"
    debs.mkdir(parents=True)
    for deb in (corpora_dir(TEST_CACHE) / "debs").glob("*.deb"):
        shutil.copy(deb, debs / deb.name)


def test_the_default_never_reads_the_system_catalogs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an empty data dir the loader fails with the fetch command, although this machine
    has French catalogs under /usr/share/locale; an empty stand-in folder fails the same way."""
    monkeypatch.delenv("COMPASS_GETTEXT_DIR")
    monkeypatch.setenv("COMPASS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="compass data fetch --gettext"):
        load_gettext(["fr"])
    empty = tmp_path / "usr-share-locale"
    empty.mkdir()
    with pytest.raises(DataError, match="no gettext catalogs for \\['fr'\\]"):
        load_gettext(["fr"], locale_dir=empty)


def test_fetch_unpacks_only_the_catalogs_and_their_licences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _reuse_debs(tmp_path)
    folder = fetch_gettext(tmp_path)
    assert folder == gettext_locale_dir(tmp_path)
    topics = [*STABLE_TOPICS, *SHIFTED_TOPICS, *SECOND_SHIFT_TOPICS]
    records = load_gettext(["fr", "de", "es", "it"], domains=topics, locale_dir=folder)
    found = {(r.language, r.topic) for r in records}
    assert {(code, topic) for code in ("fr", "de", "es") for topic in topics} <= found
    manifest = read_manifest(tmp_path)
    assert set(manifest) == set(GETTEXT_PACKAGES)
    root = corpora_dir(tmp_path) / "root"
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert all(f.endswith(".mo") or f.endswith("/copyright") for f in files)
    for entry in manifest.values():
        assert (root / entry.copyright_file).is_file() and len(entry.sha256) == 64
    # the default (no locale_dir) reads the same folder once COMPASS_DATA_DIR points there
    monkeypatch.delenv("COMPASS_GETTEXT_DIR")
    monkeypatch.setenv("COMPASS_DATA_DIR", str(tmp_path))
    assert load_gettext(["fr"], domains=["git"]) == load_gettext(
        ["fr"], domains=["git"], locale_dir=folder
    )


def test_fetch_without_apt_get_is_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPASS_")}
    env.update(PATH=str(tmp_path), COMPASS_DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run(
        [sys.executable, "-m", "compass.cli", "data", "fetch", "--gettext"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "apt-get is not available" in result.stderr
    assert "Traceback" not in result.stderr
