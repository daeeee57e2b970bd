"""Published contracts: the committed schemas match the models, the golden messages of every topic
and version validate with a standard JSON Schema validator and are read by the current code, a
message of an unknown future version is dead-lettered (``unsupported_schema_version``), and the
AsyncAPI document validates with the AsyncAPI parser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from compass.cli import app
from compass.contracts import (
    ACCEPTED_VERSIONS,
    CONTRACTS,
    TopicContract,
    check_files,
    contract_for,
    generated_files,
    json_schema,
    read_event,
)
from compass.core.errors import InvalidEventError
from compass.core.events import (
    AdapterUpdated,
    DeadLetter,
    DriftEvent,
    PromptEvent,
    decode,
    decode_prompt_event,
)

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
ASYNCAPI_DIR = REPO / "scripts" / "asyncapi"


def _goldens(kind: str) -> list[tuple[str, Path]]:
    """(topic, file) for every golden message; ``kind`` is ``current`` (v<N>/) or ``future``."""
    out = []
    for topic_dir in sorted(p for p in GOLDEN.iterdir() if p.is_dir()):
        for path in sorted(topic_dir.glob("*/*.json")):
            is_future = path.parent.name == "future"
            if is_future == (kind == "future"):
                out.append((topic_dir.name, path))
    return out


def _id(value: Any) -> str:
    return str(value.relative_to(GOLDEN)) if isinstance(value, Path) else str(value)


def _validator(contract: TopicContract, version: int | None = None) -> Draft202012Validator:
    """The validator of the committed schema of ``contract``'s topic at ``version`` (default:
    the current one; earlier versions keep their files while they are accepted)."""
    name = f"{contract.topic}.v{version or contract.version}.schema.json"
    schema = json.loads((REPO / "docs" / "schemas" / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


# ------------------------------------------------------------------ generated files
def test_committed_schemas_and_asyncapi_match_the_models() -> None:
    assert check_files(REPO) == [], "run `compass schemas` and commit docs/"


def test_generator_is_one_command_and_check_detects_drift(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["schemas", "--check", "--root", str(tmp_path)]).exit_code == 1
    result = runner.invoke(app, ["schemas", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.*")} == set(generated_files())
    assert runner.invoke(app, ["schemas", "--check", "--root", str(tmp_path)]).exit_code == 0
    schema = tmp_path / "docs" / "schemas" / contract_for("prompt-events").schema_file
    schema.write_text(schema.read_text().replace('"text"', '"prompt"'))
    result = runner.invoke(app, ["schemas", "--check", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "prompt-events.v1.schema.json" in result.output


def test_every_topic_has_a_schema_goldens_and_a_future_sample() -> None:
    assert {c.topic for c in CONTRACTS} == {
        "prompt-events",
        "prompt-events.dlq",
        "drift-events",
        "adapter-updated",
    }
    for contract in CONTRACTS:
        for version in ACCEPTED_VERSIONS[contract.topic]:
            assert list((GOLDEN / contract.topic / f"v{version}").glob("*.json")), contract.topic
        assert (GOLDEN / contract.topic / "future").is_dir(), contract.topic
        schema = json_schema(contract)
        assert schema["required"][0] == "schema_version"
        assert schema["properties"]["schema_version"]["const"] == contract.version
    assert {p.name for p in GOLDEN.iterdir() if p.is_dir()} == {c.topic for c in CONTRACTS}


# ------------------------------------------------------------------ golden messages
@pytest.mark.parametrize(("topic", "path"), _goldens("current"), ids=_id)
def test_golden_message_validates_with_jsonschema(topic: str, path: Path) -> None:
    version = int(path.parent.name.removeprefix("v"))
    contract = contract_for(topic)
    assert version in ACCEPTED_VERSIONS[topic]  # goldens of a dropped version go with it
    payload = json.loads(path.read_bytes())
    errors = [e.message for e in _validator(contract, version).iter_errors(payload)]
    assert errors == []


@pytest.mark.parametrize(("topic", "path"), _goldens("current"), ids=_id)
def test_current_code_reads_every_golden_message(topic: str, path: Path) -> None:
    raw = path.read_bytes()
    payload = json.loads(raw)
    if topic == "prompt-events":
        event = decode_prompt_event(raw)  # what the stream app runs on every message
        assert isinstance(event, PromptEvent), event
        assert event.event_id == payload["event_id"] and event.text == payload["text"]
        return
    model = {"drift-events": DriftEvent, "adapter-updated": AdapterUpdated}.get(topic, DeadLetter)
    event = read_event(raw, model)  # what compass.kafka.subscribe and other readers run
    contract = contract_for(topic)
    if contract.id_field:
        assert str(getattr(event, contract.id_field)) == payload[contract.id_field]


@pytest.mark.parametrize(
    ("topic", "path"), [(t, p) for t, p in _goldens("current") if t == "drift-events"], ids=_id
)
def test_adapter_worker_decoder_reads_drift_goldens(topic: str, path: Path) -> None:
    """The worker's decoder follows the contract: additive fields are ignored, not refused."""
    from workers.runner import decode_drift_event

    assert decode_drift_event(path.read_bytes()).language


@pytest.mark.parametrize(("topic", "path"), _goldens("future"), ids=_id)
def test_unknown_future_version_is_dead_lettered_not_raised(topic: str, path: Path) -> None:
    raw = path.read_bytes()
    contract = contract_for(topic)
    assert list(_validator(contract).iter_errors(json.loads(raw)))  # the v1 schema refuses it
    if topic == "prompt-events":
        letter = decode_prompt_event(raw)
        assert isinstance(letter, DeadLetter)
        assert letter.reason == "unsupported_schema_version" and letter.raw == raw
        return
    with pytest.raises(InvalidEventError) as caught:
        read_event(raw, contract.model)
    assert caught.value.reason == "unsupported_schema_version"
    if topic == "drift-events":  # the adapter worker dead-letters what decode() refuses
        with pytest.raises(InvalidEventError) as caught:
            decode(raw, DriftEvent)
        assert caught.value.reason == "unsupported_schema_version"


INVALID_PROMPT_EVENTS = {
    "missing_text": {"event_id": "e1", "occurred_at": "2026-11-28T06:00:00Z", "language": "fr"},
    "blank_text": {"event_id": "e2", "occurred_at": "2026-11-28T06:00:00Z", "language": "fr",
                   "text": "  \n "},
    "naive_timestamp": {"event_id": "e3", "occurred_at": "2026-11-28T06:00:00", "language": "fr",
                        "text": "bonjour"},
    "empty_event_id": {"event_id": "", "occurred_at": "2026-11-28T06:00:00Z", "language": "fr",
                       "text": "bonjour"},
    "no_version": {"event_id": "e4", "occurred_at": "2026-11-28T06:00:00Z", "language": "fr",
                   "text": "bonjour", "schema_version": None},
    "number_language": {"event_id": "e5", "occurred_at": "2026-11-28T06:00:00Z", "language": 7,
                        "text": "bonjour"},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(INVALID_PROMPT_EVENTS))
def test_schema_and_stream_agree_on_invalid_prompt_events(name: str) -> None:
    payload = {"schema_version": 1, **INVALID_PROMPT_EVENTS[name]}
    if payload["schema_version"] is None:
        del payload["schema_version"]
    assert list(_validator(contract_for("prompt-events")).iter_errors(payload)), name
    assert isinstance(decode_prompt_event(json.dumps(payload).encode()), DeadLetter), name


def test_read_event_ignores_unknown_fields_at_every_level() -> None:
    raw = (GOLDEN / "adapter-updated" / "v1" / "additive-field.json").read_bytes()
    event = read_event(raw, AdapterUpdated)
    assert event.peft.r == 8 and "init_lora_weights" not in event.peft.model_dump()
    with pytest.raises(InvalidEventError) as caught:
        read_event(b'{"schema_version": 1, "drift_id": "x"', DriftEvent)
    assert caught.value.reason == "invalid_json"
    with pytest.raises(InvalidEventError) as caught:
        read_event(b'{"drift_id": "x"}', DriftEvent)
    assert caught.value.reason == "missing_field"


# ------------------------------------------------------------------ AsyncAPI
def _asyncapi_validator() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the AsyncAPI parser needs Node.js")
    if not (ASYNCAPI_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        subprocess.run(["bash", str(REPO / "scripts" / "install-test-tools.sh")], check=False)
    if not (ASYNCAPI_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.skip("npm could not install @asyncapi/parser (scripts/install-test-tools.sh)")
    return [node, str(ASYNCAPI_DIR / "validate.mjs"), "--strict"]


def test_asyncapi_document_validates_with_the_asyncapi_parser(tmp_path: Path) -> None:
    command = _asyncapi_validator()
    result = subprocess.run(
        [*command, str(REPO / "docs" / "asyncapi.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 channels" in result.stdout and "0 errors, 0 warnings" in result.stdout

    broken = (
        (REPO / "docs" / "asyncapi.yaml")
        .read_text()
        .replace("#/components/messages/DriftEventV1", "#/components/messages/Missing")
    )
    (tmp_path / "broken.yaml").write_text(broken)
    result = subprocess.run(
        [*command, str(tmp_path / "broken.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 1 and "Missing" in result.stdout
