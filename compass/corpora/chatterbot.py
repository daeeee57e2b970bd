"""``chatterbot-corpus`` (PyPI): general-domain chat lines in 28 languages, 42 topic files.

Not parallel (the translations do not align line by line), so ``parallel_key`` is ``None``.
Lines are read in file order (files sorted), deduplicated per language.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any

from compass.core.errors import DataError
from compass.core.languages import normalize_language
from compass.core.records import TextRecord, stable_id

SOURCE = "chatterbot-corpus"
FOLDERS: dict[str, str] = {
    "bengali": "bn", "chinese": "zh-CN", "dutch": "nl", "english": "en", "french": "fr",
    "german": "de", "hebrew": "he", "hindi": "hi", "indonesian": "id", "italian": "it",
    "japanese": "ja", "korean": "ko", "marathi": "mr", "oriya": "or", "persian": "fa",
    "portuguese": "pt", "russian": "ru", "spanish": "es", "swedish": "sv", "tamil": "ta",
    "telugu": "te", "thai": "th", "traditionalchinese": "zh-TW", "turkish": "tr",
    "ukrainian": "uk", "urdu": "ur", "yoruba": "yo",
}  # fmt: skip


def corpus_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the chatterbot-corpus package is not installed (pip install it)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def available_languages() -> list[str]:
    base = corpus_dir()
    return sorted(code for folder, code in FOLDERS.items() if (base / folder).is_dir())


def _lines(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [line for item in value for line in _lines(item)]
    return []


def load_chatterbot(
    languages: Sequence[str] | None = None,
    *,
    limit_per_language: int | None = None,
    min_chars: int = 1,
) -> list[TextRecord]:
    import yaml

    base = corpus_dir()
    by_code = {code: folder for folder, code in FOLDERS.items()}
    wanted = [normalize_language(c) for c in languages] if languages else available_languages()
    missing = [code for code in wanted if code not in by_code]
    if missing:
        raise DataError(f"chatterbot-corpus has no {missing}; it has {available_languages()}")
    out: list[TextRecord] = []
    for code in wanted:
        per_file: list[list[TextRecord]] = []
        seen: set[str] = set()
        for path in sorted((base / by_code[code]).glob("*.yml")):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                continue
            rows = []
            for text in _lines(data.get("conversations", [])):
                text = " ".join(str(text).split())
                if len(text) < min_chars or text in seen:
                    continue
                seen.add(text)
                rows.append(
                    TextRecord(stable_id(SOURCE, code, text), code, text, SOURCE, path.stem, None)
                )
            per_file.append(rows)
        # Round-robin over topic files so that a capped load still spans every topic.
        mixed = [row for group in zip_longest(*per_file) for row in group if row is not None]
        out.extend(mixed[:limit_per_language] if limit_per_language is not None else mixed)
    return out
