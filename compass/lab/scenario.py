"""Synthetic prompt streams made of real multilingual text, for tests, benchmarks and demos.

Texts come from gettext catalogs of Debian packages (:func:`compass.corpora.load_gettext`, which
reads the catalogs ``compass data fetch --gettext`` unpacked, or ``COMPASS_GETTEXT_DIR``),
grouped by catalog ("domain"), which stands in for a topic: version-control and system messages
on one side, country, currency and keyboard-layout names on the other. A :class:`Scenario` says
which languages send how many events over which event-time span, and which language switches
topics at which point; :func:`build_stream` turns it into encoded ``prompt-events`` messages.
:func:`phased_stream` builds the demo's story instead: window-aligned phases, each giving every
language its topics (a first shift, a stable stretch, a second shift).
:func:`malformed_messages` adds the kinds of bad input the stream must dead-letter.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from compass.core.events import PromptEvent, encode
from compass.corpora import load_gettext

STABLE_TOPICS = ("git", "coreutils", "postgres-15")
SHIFTED_TOPICS = ("iso_3166-1", "iso_4217", "xkeyboard-config")
SECOND_SHIFT_TOPICS = ("postgres-15",)
"""Where the demo's French usage moves after the stable stretch: database-server messages only,
far from the names (countries, currencies, keyboard layouts) its first adapter was built for."""


@dataclass(frozen=True)
class Message:
    key: bytes
    value: bytes
    event: PromptEvent | None = None
    topic_group: str | None = None  # "stable" / "shifted" for valid events


@dataclass(frozen=True)
class Scenario:
    """``events`` per language spread evenly over ``duration``; ``shift`` maps a language to the
    fraction of the span after which it draws from the shifted topics."""

    events: dict[str, int]
    start: datetime = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    duration: timedelta = timedelta(minutes=20)
    shift: dict[str, float] = field(default_factory=dict)
    per_topic: int = 40
    seed: int = 7


def topic_pools(
    languages: Sequence[str],
    topics: Sequence[str],
    per_topic: int,
    seed: int = 7,
    locale_dir: Path | None = None,
) -> dict[tuple[str, str], list[str]]:
    """Up to ``per_topic`` distinct texts per (language, topic), deterministic under ``seed``,
    from the catalogs under ``locale_dir`` (default: :func:`load_gettext`'s)."""
    records = load_gettext(
        list(languages), domains=list(topics), min_chars=12, locale_dir=locale_dir
    )
    grouped: dict[tuple[str, str], list[str]] = {}
    for record in records:
        if record.topic is not None and len(record.text) <= 200:
            grouped.setdefault((record.language, record.topic), []).append(record.text)
    rng = random.Random(seed)
    pools = {}
    for key, texts in sorted(grouped.items()):
        unique = sorted(set(texts))
        rng.shuffle(unique)
        pools[key] = unique[:per_topic]
    return pools


def scenario_texts(scenario: Scenario) -> dict[tuple[str, str], list[str]]:
    return topic_pools(
        sorted(scenario.events), STABLE_TOPICS + SHIFTED_TOPICS, scenario.per_topic, scenario.seed
    )


def build_stream(
    scenario: Scenario, pools: dict[tuple[str, str], list[str]] | None = None
) -> list[Message]:
    """Valid events of every language, interleaved in event-time order."""
    pools = pools if pools is not None else scenario_texts(scenario)
    rng = random.Random(scenario.seed)
    timed: list[tuple[datetime, str, Message]] = []
    for language, count in sorted(scenario.events.items()):
        step = scenario.duration / count
        switch = scenario.shift.get(language)
        for i in range(count):
            shifted = switch is not None and i >= switch * count
            topics = SHIFTED_TOPICS if shifted else STABLE_TOPICS
            topic = topics[rng.randrange(len(topics))]
            text = rng.choice(pools[(language, topic)])
            occurred = scenario.start + step * i + timedelta(milliseconds=rng.randrange(500))
            event = PromptEvent(
                event_id=f"{language}-{scenario.seed}-{i:06d}",
                occurred_at=occurred,
                language=language,
                text=text,
                source="scenario",
            )
            group = "shifted" if shifted else "stable"
            message = Message(language.encode(), encode(event), event, group)
            timed.append((occurred, event.event_id, message))
    timed.sort(key=lambda item: (item[0], item[1]))
    return [message for _, _, message in timed]


@dataclass(frozen=True)
class Phase:
    """``windows`` event-time windows in which each language draws from its ``topics``."""

    name: str
    windows: int
    topics: dict[str, tuple[str, ...]]


def phased_stream(
    phases: Sequence[Phase],
    per_window: dict[str, int],
    *,
    start: datetime,
    window: timedelta,
    pools: dict[tuple[str, str], list[str]],
    seed: int = 7,
) -> list[list[Message]]:
    """The valid events of each phase, in event-time order: ``per_window[language]`` events per
    window, evenly spaced from ``start``; a phase starts on a window boundary, so every window
    is drawn from one topic mix. Event ids are unique across phases (``<lang>-<seed>-<n>``)."""
    rng = random.Random(seed)
    out: list[list[Message]] = []
    first = 0
    serial = dict.fromkeys(per_window, 0)
    for phase in phases:
        timed: list[tuple[datetime, str, Message]] = []
        for index in range(first, first + phase.windows):
            window_start = start + window * index
            for language, count in sorted(per_window.items()):
                topics = phase.topics[language]
                for i in range(count):
                    topic = topics[rng.randrange(len(topics))]
                    occurred = window_start + window * (i / count)
                    occurred += timedelta(milliseconds=rng.randrange(500))
                    event = PromptEvent(
                        event_id=f"{language}-{seed}-{serial[language]:06d}",
                        occurred_at=occurred,
                        language=language,
                        text=rng.choice(pools[(language, topic)]),
                        source="scenario",
                    )
                    serial[language] += 1
                    message = Message(language.encode(), encode(event), event, phase.name)
                    timed.append((occurred, event.event_id, message))
        timed.sort(key=lambda item: (item[0], item[1]))
        out.append([message for _, _, message in timed])
        first += phase.windows
    return out


MALFORMED_KINDS = (
    "invalid_json",
    "missing_field",
    "empty_text",
    "unknown_language",
    "text_too_long",
    "invalid_utf8",
    "unsupported_schema_version",
)


def malformed_messages(n: int, *, at: datetime, max_text_chars: int) -> list[Message]:
    """``n`` bad messages cycling through :data:`MALFORMED_KINDS` (the reason each must get)."""
    out = []
    for i in range(n):
        kind = MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
        good = {
            "schema_version": 1,
            "event_id": f"bad-{i:04d}",
            "occurred_at": at.isoformat(),
            "language": "fr",
            "text": "Comment configurer le pare-feu ?",
        }
        if kind == "invalid_json":
            raw = b'{"schema_version": 1, "event_id": "bad-' + str(i).encode() + b'", '
        elif kind == "missing_field":
            del good["occurred_at"]
            raw = json.dumps(good).encode()
        elif kind == "empty_text":
            raw = json.dumps({**good, "text": "   "}).encode()
        elif kind == "unknown_language":
            raw = json.dumps({**good, "language": "qq-ZZ"}).encode()
        elif kind == "text_too_long":
            raw = json.dumps({**good, "text": "é" * (max_text_chars + 1)}).encode()
        elif kind == "invalid_utf8":
            raw = json.dumps(good).encode().replace(b"configurer", b"configur\xe9r\xff")
        else:
            raw = json.dumps({**good, "schema_version": 2}).encode()
        out.append(Message(b"fr", raw))
    return out


def interleave(valid: list[Message], bad: list[Message], seed: int = 3) -> list[Message]:
    """Bad messages spread at random positions through the valid stream."""
    rng = random.Random(seed)
    out = list(valid)
    for message in bad:
        out.insert(rng.randrange(len(out) + 1), message)
    return out


def pool_texts(pools: dict[tuple[str, str], list[str]]) -> list[str]:
    return [text for key in sorted(pools) for text in pools[key]]


def shifted_clusters(
    pools: dict[tuple[str, str], list[str]], assign: dict[str, int], k: int
) -> tuple[set[int], set[int]]:
    """Clusters where shifted-topic texts outnumber stable ones, and the converse."""
    stable = [0] * k
    shifted = [0] * k
    for (_, topic), texts in pools.items():
        for text in texts:
            target = shifted if topic in SHIFTED_TOPICS else stable
            target[assign[text]] += 1
    return (
        {c for c in range(k) if shifted[c] > stable[c]},
        {c for c in range(k) if stable[c] > shifted[c]},
    )
