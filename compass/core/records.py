"""The one record type every corpus loader returns, and the file format users bring.

A user's own target set, coverage set or auxiliary pool is JSON Lines (one object per line) or
Parquet with the columns of :class:`TextRecord`; only ``text`` and ``language`` are required.
Missing ``id`` values become a stable hash of (source, language, text) so that re-reading the same
file gives the same ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compass.core.errors import DataError, UnknownLanguageError
from compass.core.languages import normalize_language

RECORD_FIELDS = ("id", "language", "text", "source", "topic", "parallel_key")


@dataclass(frozen=True, slots=True)
class TextRecord:
    """One text in one language, with where it came from.

    ``parallel_key`` is shared by translations of the same text (LibreOffice paragraph id, gettext
    msgid, handbook section+paragraph) so that cross-lingual agreement can be measured; ``None``
    when the corpus is not parallel.
    """

    id: str
    language: str
    text: str
    source: str
    topic: str | None = None
    parallel_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stable_id(*parts: str) -> str:
    """A short deterministic id for a record that came without one."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:24]


def record_from_mapping(row: dict[str, Any], *, default_source: str, where: str) -> TextRecord:
    """Validate one user-supplied row; raises :class:`DataError` naming the row on bad input."""
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: 'text' must be a non-empty string")
    raw_language = row.get("language")
    if not isinstance(raw_language, str):
        raise DataError(f"{where}: 'language' must be a BCP-47 code such as 'sw' or 'pt-BR'")
    try:
        language = normalize_language(raw_language)
    except UnknownLanguageError as exc:
        raise DataError(f"{where}: {exc}") from None
    source = str(row.get("source") or default_source)
    rid = row.get("id")
    topic = row.get("topic")
    parallel_key = row.get("parallel_key")
    return TextRecord(
        id=str(rid) if rid not in (None, "") else stable_id(source, language, text),
        language=language,
        text=text,
        source=source,
        topic=str(topic) if topic not in (None, "") else None,
        parallel_key=str(parallel_key) if parallel_key not in (None, "") else None,
    )


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object")
            yield lineno, row


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    yield from enumerate(table.to_pylist(), start=1)


def read_records(
    path: str | Path,
    *,
    language: str | None = None,
    limit: int | None = None,
    default_source: str | None = None,
) -> list[TextRecord]:
    """Read a user's JSONL (``.jsonl``/``.json``) or Parquet (``.parquet``) file of records.

    ``language`` keeps only rows of that language (normalised); ``limit`` caps the count.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows: Iterable[tuple[int, dict[str, Any]]] = _iter_jsonl(path)
    elif suffix in (".parquet", ".pq"):
        rows = _iter_parquet(path)
    else:
        raise DataError(f"{path}: unsupported format {suffix!r}; use .jsonl or .parquet")
    wanted = normalize_language(language) if language else None
    source = default_source or path.stem
    out: list[TextRecord] = []
    for where, row in rows:
        record = record_from_mapping(row, default_source=source, where=f"{path}:{where}")
        if wanted is not None and record.language != wanted:
            continue
        out.append(record)
        if limit is not None and len(out) >= limit:
            break
    return out


def write_records(records: Sequence[TextRecord], path: str | Path) -> Path:
    """Write records as JSONL (or Parquet when ``path`` ends in ``.parquet``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {name: [getattr(r, name) for r in records] for name in RECORD_FIELDS}
        pq.write_table(pa.table(columns), path)
        return path
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    return path
