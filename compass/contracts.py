"""The published contracts of COMPASS's public topics, generated from the event models.

One :class:`TopicContract` per topic names its model, key, duplicate-dropping id, producers and
consumers. From them come the JSON Schemas in ``docs/schemas/<topic>.v<N>.schema.json`` and the
AsyncAPI 3 document ``docs/asyncapi.yaml`` (``compass schemas`` writes both;
``compass schemas --check`` and ``tests/unit/test_contracts.py`` fail when they drift from the
models).

Schema evolution (``docs/schemas/README.md``): an additive change (a new optional field) keeps
``schema_version`` and every consumer ignores fields it does not know; a breaking change bumps
it, and consumers keep reading the previous version — through an upgrade function registered in
:data:`ACCEPTED_VERSIONS` — for at least :data:`PREVIOUS_VERSION_SUPPORT_DAYS` days after the
new one ships. Any other version is dead-lettered with reason ``unsupported_schema_version``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel

from compass.core.errors import InvalidEventError
from compass.core.events import (
    AdapterUpdated,
    DeadLetter,
    DriftEvent,
    PromptEvent,
    parse_payload,
    validate_payload,
)

__all__ = [
    "ACCEPTED_VERSIONS",
    "CONTRACTS",
    "CONTRACTS_VERSION",
    "PREVIOUS_VERSION_SUPPORT_DAYS",
    "TopicContract",
    "asyncapi_document",
    "check_files",
    "contract_for",
    "generated_files",
    "json_schema",
    "read_event",
    "write_files",
]

# Bump the major part with any schema_version bump, the minor part with an additive change.
CONTRACTS_VERSION = "1.0.0"
PREVIOUS_VERSION_SUPPORT_DAYS = 90
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

ModelT = TypeVar("ModelT", bound=BaseModel)
Upgrade = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class TopicContract:
    """One public topic: its value model and how it is keyed, produced and consumed.

    ``id_field`` names the field duplicates share (empty: the key identifies the message).
    ``direction`` is ``in`` for a topic others write and COMPASS reads, ``out`` for one COMPASS
    writes. Either way the schema says what a reader must accept: the fields without a default
    are required (plus ``schema_version``), so an added optional field leaves every earlier
    message of the same version valid."""

    topic: str
    setting: str
    model: type[BaseModel]
    key: str
    id_field: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    direction: Literal["in", "out"]
    summary: str

    @property
    def version(self) -> int:
        return int(self.model.model_fields["schema_version"].default)

    @property
    def schema_file(self) -> str:
        return f"{self.topic}.v{self.version}.schema.json"


CONTRACTS: tuple[TopicContract, ...] = (
    TopicContract(
        topic="prompt-events",
        setting="topic_prompt_events",
        model=PromptEvent,
        key="the event's language tag, UTF-8 (e.g. `pt-BR`): one language stays on one partition",
        id_field="event_id",
        producers=("your serving stack (compass.client, `compass produce`, any Kafka client)",),
        consumers=("stream app (`compass streams`)",),
        direction="in",
        summary="What a user asked, in which language, when.",
    ),
    TopicContract(
        topic="prompt-events.dlq",
        setting="topic_prompt_events_dlq",
        model=DeadLetter,
        key="`<source topic>:<partition>:<offset>` of the rejected message, UTF-8",
        id_field="",
        producers=("stream app (`compass streams`)",),
        consumers=("operators; nothing in COMPASS reads it back",),
        direction="out",
        summary="A prompt event the stream could not process, with its original bytes and why.",
    ),
    TopicContract(
        topic="drift-events",
        setting="topic_drift_events",
        model=DriftEvent,
        key="the language tag, UTF-8",
        id_field="drift_id",
        producers=("stream app, through the outbox relay",),
        consumers=("adapter worker (`compass worker`)", "alerting (compass.kafka.subscribe)"),
        direction="out",
        summary="The usage of one language moved away from what its live adapter was built for.",
    ),
    TopicContract(
        topic="adapter-updated",
        setting="topic_adapter_updated",
        model=AdapterUpdated,
        key="the language tag, UTF-8",
        id_field="message_id",
        producers=("adapter worker, through the outbox relay",),
        consumers=("model servers (compass.kafka.subscribe)",),
        direction="out",
        summary="A new adapter version is live: enough to fetch, verify and hot-load it.",
    ),
)


def contract_for(topic: str) -> TopicContract:
    """The contract of a default topic name (``prompt-events`` …); ``KeyError`` otherwise."""
    for contract in CONTRACTS:
        if contract.topic == topic:
            return contract
    raise KeyError(topic)


def _same(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


# schema_version → function turning a payload of that version into one of the current version.
# After a bump to N+1, register N here with its upgrade and keep it for the support period.
ACCEPTED_VERSIONS: dict[str, dict[int, Upgrade]] = {
    contract.topic: {contract.version: _same} for contract in CONTRACTS
}

# Field documentation for readers of the schemas (the models carry the types and bounds).
_FIELD_DOCS: dict[str, str] = {
    "schema_version": "Version of this message's schema; consumers dead-letter versions they "
    "do not read (reason `unsupported_schema_version`).",
    "event_id": "Your unique id of this event (1-200 chars). A re-sent event with the same id "
    "is counted once.",
    "occurred_at": "When the user asked: RFC 3339 date-time with a time zone.",
    "language": "BCP 47 language tag (`fr`, `pt-BR`, `zh-Hant-TW`); canonicalised by the "
    "consumer (`pt_br` becomes `pt-BR`); unknown languages are dead-lettered.",
    "text": "The prompt, non-blank. Deployments dead-letter texts longer than "
    "COMPASS_MAX_TEXT_CHARS (default 8000) and messages larger than COMPASS_MAX_EVENT_BYTES "
    "(default 64000 bytes).",
    "source": "Optional: which service or client sent it (up to 200 chars).",
    "metadata": "Optional free-form JSON object; stored, never interpreted.",
    "drift_id": "Unique id of this drift; duplicates (at-least-once delivery) share it.",
    "message_id": "Unique id of this announcement; duplicates share it.",
    "reason": "Stable reason code (docs/streaming.md lists them).",
    "raw_b64": "The original message value, base64.",
}

_STRING_DEFAULTS = {"language": ["fr", "pt-BR"]}


def _walk(node: Any, visit: Callable[[dict[str, Any]], None]) -> None:
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            _walk(value, visit)
    elif isinstance(node, list):
        for value in node:
            _walk(value, visit)


def _polish(schema: dict[str, Any], contract: TopicContract) -> dict[str, Any]:
    """Make pydantic's schema a contract: ``schema_version`` required, no closed objects
    (readers ignore unknown fields), field docs for people."""

    def visit(node: dict[str, Any]) -> None:
        properties = node.get("properties")
        if not isinstance(properties, dict):
            return
        node.pop("additionalProperties", None)  # tolerant readers: additive changes are safe
        required = list(node.get("required", []))
        if "schema_version" in properties and "schema_version" not in required:
            required.insert(0, "schema_version")  # consumers dead-letter a missing version
        node["required"] = required
        for name, prop in properties.items():
            prop.pop("title", None)
            if name in _FIELD_DOCS and "description" not in prop:
                prop["description"] = _FIELD_DOCS[name]
            if name in _STRING_DEFAULTS:
                prop["examples"] = _STRING_DEFAULTS[name]
        if node.get("title") == "PromptEvent" and "text" in properties:
            properties["text"]["pattern"] = r"\S"  # at least one non-blank character

    _walk(schema, visit)
    return schema


def json_schema(contract: TopicContract, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``contract``'s message value."""
    schema = contract.model.model_json_schema(mode="validation", ref_template=ref_template)
    schema = _polish(schema, contract)
    head = {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"{contract.topic} v{contract.version}",
        "description": f"{contract.summary} Topic `{contract.topic}`, key: {contract.key}. "
        f"Delivery is at least once: drop duplicates by {_dedupe_by(contract)}.",
    }
    schema.pop("title", None)
    schema.pop("description", None)
    return {**head, **schema}


def _dedupe_by(contract: TopicContract) -> str:
    return f"`{contract.id_field}`" if contract.id_field else "the key"


def _channel_id(topic: str) -> str:
    parts = topic.replace(".", "-").split("-")
    return parts[0] + "".join(p.title() for p in parts[1:])


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.1 document of all public topics (payloads are the JSON Schemas above)."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for contract in CONTRACTS:
        channel = _channel_id(contract.topic)
        message = f"{contract.model.__name__}V{contract.version}"
        payload = json_schema(contract, ref_template="#/components/schemas/{model}")
        schemas.update(payload.pop("$defs", {}))
        payload.pop("$schema", None)
        messages[message] = {
            "name": message,
            "title": f"{contract.topic} v{contract.version}",
            "summary": contract.summary,
            "contentType": "application/json",
            "payload": payload,
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": contract.key},
                    "bindingVersion": "0.5.0",
                }
            },
        }
        channels[channel] = {
            "address": contract.topic,
            "title": contract.topic,
            "description": (
                f"{contract.summary}\n\nProduced by: {'; '.join(contract.producers)}.\n"
                f"Consumed by: {'; '.join(contract.consumers)}.\n"
                f"Key: {contract.key}.\nDelivery: at least once; drop duplicates by "
                f"{_dedupe_by(contract)}. Topic name setting: "
                f"COMPASS_{contract.setting.upper()}.\n"
                f"JSON Schema: docs/schemas/{contract.schema_file}."
            ),
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        }
        ref = {"$ref": f"#/channels/{channel}"}
        msg_ref = [{"$ref": f"#/channels/{channel}/messages/{message}"}]
        action = "receive" if contract.direction == "in" else "send"
        operations[f"{action}{channel[0].upper()}{channel[1:]}"] = {
            "action": action,
            "channel": ref,
            "summary": f"COMPASS {'reads' if action == 'receive' else 'writes'} {contract.topic}.",
            "messages": msg_ref,
        }
        if contract.topic == "drift-events":
            operations["receiveDriftEvents"] = {
                "action": "receive",
                "channel": ref,
                "summary": "The adapter worker reads drift-events (consumer group "
                "compass-adapter-workers) and commits after the job is recorded.",
                "messages": msg_ref,
            }
    return {
        "asyncapi": "3.1.0",
        "info": {
            "title": "COMPASS event contracts",
            "version": CONTRACTS_VERSION,
            "description": (
                "The Kafka topics through which usage comes into COMPASS and drift and adapter "
                "versions come out. Every value is one UTF-8 JSON object with a "
                "`schema_version`. Delivery is at least once everywhere: consumers drop "
                "duplicates by the message's id. Consumers ignore fields they do not know "
                "(additive changes keep the version); a breaking change bumps "
                "`schema_version`, and consumers keep reading the previous version for at "
                f"least {PREVIOUS_VERSION_SUPPORT_DAYS} days (docs/schemas/README.md). "
                "Generated by `compass schemas` from compass/core/events.py."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The embedded broker of `compass infra up` "
                "(COMPASS_BROKER_BOOTSTRAP_SERVERS names a real cluster).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def generated_files() -> dict[str, str]:
    """Every generated file, as ``{path relative to the repository: text}``."""
    files = {f"docs/schemas/{c.schema_file}": _json_text(json_schema(c)) for c in CONTRACTS}
    header = "# Generated by `compass schemas` from compass/core/events.py: do not edit.\n"
    files["docs/asyncapi.yaml"] = header + yaml.dump(
        asyncapi_document(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
    )
    return files


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the document reads like prose."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def write_files(root: Path) -> list[str]:
    """Write the generated files under ``root``; return those whose content changed."""
    changed = []
    for relative, text in generated_files().items():
        path = root / relative
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        changed.append(relative)
    return changed


def check_files(root: Path) -> list[str]:
    """The generated files under ``root`` that are missing or differ from the models."""
    stale = []
    for relative, text in generated_files().items():
        path = root / relative
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(relative)
    return stale


# ---------------------------------------------------------------------------- reading
def _known_fields(model: type[BaseModel], payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` without the keys ``model`` does not know, at every nesting level."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name not in payload:
            continue
        value = payload[name]
        inner = _nested_model(field.annotation)
        if inner is not None and isinstance(value, Mapping):
            value = _known_fields(inner, value)
        elif inner is not None and isinstance(value, list):
            value = [_known_fields(inner, v) if isinstance(v, Mapping) else v for v in value]
        out[name] = value
    return out


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None


def read_event(
    raw: bytes | None,
    model: type[ModelT],
    topic: str | None = None,
    *,
    max_bytes: int | None = None,
) -> ModelT:
    """Decode one value of a COMPASS topic the way the contract promises: the edge policy of
    :mod:`compass.core.events` (size, UTF-8, bounded JSON), then unknown fields are ignored and
    an accepted earlier ``schema_version`` is upgraded; any other version raises.

    Raises :class:`InvalidEventError` and nothing else: reason ``unsupported_schema_version``,
    ``missing_field``, ``empty_payload``, ``oversized_payload``, ``invalid_utf8``,
    ``invalid_json``, ``not_an_object`` or a field reason."""
    contract = next((c for c in CONTRACTS if c.model is model), None)
    accepted = ACCEPTED_VERSIONS.get(contract.topic, {}) if contract else {}
    payload = parse_payload(raw, max_bytes)
    if not accepted:
        return validate_payload(payload, model)
    if "schema_version" not in payload:
        raise InvalidEventError("missing_field", "schema_version: field required", "schema")
    version = payload["schema_version"]
    upgrade = accepted.get(version) if type(version) is int else None
    if upgrade is None:
        shown = repr(version)[:50].encode("utf-8", "replace").decode("utf-8")
        raise InvalidEventError(
            "unsupported_schema_version",
            f"{topic or model.__name__}: schema_version {shown} "
            f"(this consumer reads {sorted(accepted)})",
            "schema",
        )
    return validate_payload(_known_fields(model, upgrade(payload)), model)
