"""The artifact store on a local directory (or a mounted shared one): ``<root>/<language>/<key>``.

Implements :class:`compass.ports.artifacts.ArtifactStore`. Version folders are recorded as
``file://`` URIs. Next to the PEFT files (:mod:`compass.lm.training.artifacts`) a version keeps the
texts it was trained on, so the next continual update can replay them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from compass.core.errors import DataError

TRAINING_TEXTS_FILE = "training_texts.jsonl"
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""One folder name: BCP-47 tags, uuids, ``sw-v7``; never ``..``, ``/``, ``\\`` or a NUL."""


class LocalArtifactStore:
    """Adapter versions under ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def version_dir(self, language: str, key: str) -> Path:
        """``<root>/<language>/<key>``; raises :class:`DataError` for a component that is not
        a plain name (``..``, an absolute path, a separator, a NUL, a leading dot, over 200
        characters) or a result that would resolve outside ``root`` (a symlinked folder)."""
        for what, part in (("language", language), ("version key", key)):
            if not _SAFE_COMPONENT.fullmatch(part):
                raise DataError(f"unsafe artifact path: {what} {part[:100]!r} is not a plain name")
        folder = self.root / language / key
        root = self.root.resolve()
        if not folder.resolve().is_relative_to(root):
            raise DataError(f"unsafe artifact path: {folder} resolves outside {root}")
        return folder

    def uri(self, folder: Path) -> str:
        return Path(folder).resolve().as_uri()

    def local_path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file"):
            raise DataError(f"this artifact store reads file:// adapter artifacts, not {uri!r}")
        return Path(unquote(parsed.path))

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"


def write_training_texts(
    folder: Path,
    texts: Sequence[str],
    clusters: Sequence[int | None] | None = None,
    semantic_map: str | None = None,
) -> None:
    """Write ``texts`` (JSON lines ``{"text": ...}``) into a version folder; with ``clusters``
    (one per text, ``None`` when unknown) each line also carries ``cluster`` and the
    ``semantic_map`` version the cluster ids belong to — what stratified replay reads."""
    if clusters is not None and len(clusters) != len(texts):
        raise DataError(f"{len(clusters)} clusters for {len(texts)} training texts")
    with (folder / TRAINING_TEXTS_FILE).open("w", encoding="utf-8") as handle:
        for index, text in enumerate(texts):
            row: dict[str, object] = {"text": text}
            if clusters is not None and clusters[index] is not None:
                row["cluster"] = int(clusters[index])  # type: ignore[arg-type]
                row["semantic_map"] = semantic_map
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_training_clusters(folder: Path, semantic_map: str | None) -> list[int] | None:
    """The cluster of every training text of a version, when all were recorded under the
    ``semantic_map`` version given (``None`` otherwise: replay is then not stratified)."""
    path = folder / TRAINING_TEXTS_FILE
    if not path.exists():
        return None
    clusters: list[int] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            if "cluster" not in row or row.get("semantic_map") != semantic_map:
                return None
            clusters.append(int(row["cluster"]))
    return clusters


def read_training_texts(folder: Path) -> list[str]:
    """The texts a version was trained on; empty for a folder without them."""
    path = folder / TRAINING_TEXTS_FILE
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]
