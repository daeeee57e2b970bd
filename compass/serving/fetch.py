"""Fetch an adapter artifact by URI into a local cache and verify it against its manifest.

The copy goes through ``fsspec``, so ``file://`` URIs and local paths work now and object stores
(``s3://``, ``gs://`` ...) plug in by installing their fsspec package. Every file the manifest lists
is copied and its SHA-256 compared with the manifest; the folder becomes visible under
``<cache>/<adapter_name>`` only once every file matched, so an engine never sees a partial or
tampered artifact.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class ArtifactError(Exception):
    """An artifact cannot be served; ``str()`` starts with a stable code (``artifact_corrupt``,
    ``artifact_missing``, ``manifest_incomplete``, ``unsafe_name``, ``fetch_failed``)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_folder(folder: Path, manifest: Mapping[str, str]) -> None:
    """Raise :class:`ArtifactError` unless every file of ``manifest`` ({name: sha256}) is in
    ``folder`` with that SHA-256."""
    for name, expected in sorted(manifest.items()):
        file = folder / name
        if not file.is_file():
            raise ArtifactError(f"artifact_missing: {name} is not in the artifact")
        actual = _sha256(file)
        if actual != expected:
            raise ArtifactError(
                f"artifact_corrupt: {name} has sha256 {actual[:12]}…, the manifest says "
                f"{expected[:12]}…"
            )


def _check_manifest(adapter_name: str, manifest: Mapping[str, str]) -> None:
    if not _SAFE_NAME.match(adapter_name):
        raise ArtifactError(f"unsafe_name: adapter name {adapter_name!r}")
    for name in manifest:
        if not _SAFE_NAME.match(name):
            raise ArtifactError(f"unsafe_name: manifest file name {name!r}")
    missing = [name for name in REQUIRED_FILES if name not in manifest]
    if missing:
        raise ArtifactError(f"manifest_incomplete: the manifest does not list {missing}")


def fetch_artifact(
    uri: str, manifest: Mapping[str, str], cache_dir: Path, adapter_name: str
) -> Path:
    """The verified local folder of the artifact at ``uri`` (a folder URL that fsspec opens, or
    a local path): ``<cache_dir>/<adapter_name>``. A cached folder that still verifies is
    reused; otherwise the manifest's files are copied into a temporary folder, verified, and
    moved into place. Raises :class:`ArtifactError`."""
    import fsspec

    _check_manifest(adapter_name, manifest)
    cache_dir = Path(cache_dir)
    target = cache_dir / adapter_name
    if target.is_dir():
        try:
            verify_folder(target, manifest)
            return target
        except ArtifactError:
            shutil.rmtree(target, ignore_errors=True)  # a stale or damaged copy: fetch again
    staging = cache_dir / f".{adapter_name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(parents=True)
    try:
        try:
            fs, root = fsspec.core.url_to_fs(uri)
            for name in sorted(manifest):
                fs.get_file(f"{root.rstrip('/')}/{name}", str(staging / name))
        except FileNotFoundError as exc:
            raise ArtifactError(f"artifact_missing: {uri}: {exc}") from exc
        except Exception as exc:  # fsspec back ends raise their own types
            raise ArtifactError(f"fetch_failed: {uri}: {type(exc).__name__}: {exc}") from exc
        verify_folder(staging, manifest)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
