"""The artifact-store port: where adapter versions are written and read back.

Training and PEFT read and write local folders, so the store hands out local paths: a folder to
write a new version into, the URI recorded for it (``adapter_versions.artifact_uri`` and the
``adapter-updated`` announcement), and, for a recorded URI, the local folder holding that version.
The implementation for a local directory is :class:`compass.lm.artifact_store.LocalArtifactStore`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class ArtifactStore(Protocol):
    def version_dir(self, language: str, key: str) -> Path:
        """The local folder a new version of ``language``'s adapter is written to (``key``
        names the version, e.g. the drift id; a folder left by an earlier try is replaced)."""
        ...

    def uri(self, folder: Path) -> str:
        """The URI recorded for the version written to ``folder``."""
        ...

    def local_path(self, uri: str) -> Path:
        """The local folder of the version recorded as ``uri``; raises
        :class:`~compass.core.errors.DataError` for a URI this store cannot reach."""
        ...
