"""Adapter serving names that are unique forever (issue 11).

Serving engines (vLLM, SGLang) cache a LoRA adapter by its name: a name that comes back with
other weights — ``fr-v3`` again after a database reset restarted the numbering — can serve stale
weights. A name therefore carries the content: ``<language>-v<number>-<first 8 hex of the
manifest hash>``, e.g. ``fr-v3-1a2b3c4d``. Two versions with the same number but different files
get different names; the same files under the same number get the same name (harmless: same
weights).

**The manifest hash** (:func:`manifest_sha256`) is the SHA-256 (lower-case hex) of the UTF-8 JSON
object of the manifest ``{file path: file sha256}`` with its keys sorted, written as Python's
``json.dumps(manifest, sort_keys=True)`` does (``", "`` and ``": "`` separators, non-ASCII as
``\\uXXXX``). It is what ``adapter_versions.artifact_sha256`` stores for every version the worker
writes, so SQL can rebuild a name as ``language || '-v' || number || '-' ||
left(artifact_sha256, 8)`` (the ``adapter_history`` and ``live_adapters`` views do).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping

NAME_HASH_CHARS = 8
_HEX = re.compile(r"^[0-9a-f]+$")


def manifest_sha256(manifest: Mapping[str, str]) -> str:
    """The manifest hash: 64 lower-case hex characters (definition in the module text)."""
    entries = {str(path): str(digest) for path, digest in manifest.items()}
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()


def adapter_name(language: str, number: int, manifest_hash: str) -> str:
    """``<language>-v<number>-<first 8 hex of manifest_hash>``, e.g. ``fr-v3-1a2b3c4d``.

    ``manifest_hash`` is :func:`manifest_sha256` of the version's manifest (upper case is
    accepted); raises :class:`ValueError` for a number below 1 or a hash that is not at least
    8 hex characters."""
    digest = manifest_hash.strip().lower()
    if number < 1:
        raise ValueError(f"version number must be >= 1, got {number}")
    if len(digest) < NAME_HASH_CHARS or not _HEX.match(digest):
        raise ValueError(f"manifest hash must be hex of >= {NAME_HASH_CHARS} chars: {digest!r}")
    return f"{language}-v{number}-{digest[:NAME_HASH_CHARS]}"


def announcement_id(version_id: object, artifact_sha256: str) -> uuid.UUID:
    """The ``message_id`` of a version's promotion announcement: the same for every re-send of
    that version (subscribers drop duplicates by it), and never the same for two versions with
    different files — the version id alone repeats after a database reset renumbers versions
    from scratch, so the manifest hash is part of it. uuid5 in the URL namespace of
    ``adapter-version:<version id>:<manifest hash>``."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"adapter-version:{version_id}:{artifact_sha256}")
