"""The English source of a parallel key, where the key itself carries it.

Cluster labels are shown in English where a parallel English text exists
(:func:`compass.core.cluster_labels.english_where_parallel`). Records in English with the same
``parallel_key`` give it; some corpora also carry it in the key: a gettext key is
``mo:<domain>:<msgid>`` and the msgid *is* the English source string. One entry per key prefix.
"""

from __future__ import annotations

from collections.abc import Callable


def _gettext_msgid(key: str) -> str | None:
    parts = key.split(":", 2)
    return parts[2] if len(parts) == 3 and parts[2].strip() else None


ENGLISH_FROM_KEY: dict[str, Callable[[str], str | None]] = {"mo:": _gettext_msgid}


def english_of_key(key: str) -> str | None:
    """The English text a parallel key names, or ``None`` when its corpus does not say."""
    for prefix, reader in ENGLISH_FROM_KEY.items():
        if key.startswith(prefix):
            return reader(key)
    return None
