"""The test fixtures' default cache lies inside the repository, where
scripts/install-test-tools.sh fetches the gettext catalogs (not beside the checkout)."""

from __future__ import annotations

from tests.fixtures import REPO_ROOT


def test_repo_root_is_the_repository() -> None:
    assert (REPO_ROOT / "pyproject.toml").is_file()
    assert (REPO_ROOT / "tests" / "fixtures.py").is_file()
    script = (REPO_ROOT / "scripts" / "install-test-tools.sh").read_text()
    assert "${COMPASS_TEST_CACHE_DIR:-.data/test-cache}" in script  # relative to REPO_ROOT
