"""No message, log or repr of a store shows a password: URLs of any scheme, passwords in a
query string, libpq connection strings, and the errors psycopg and redis-py raise."""

from __future__ import annotations

import traceback
import uuid

import psycopg
import pytest
import redis
from psycopg import sql

from piton.errors import RunNotFound, StoreError, StoreUnavailable, WorkflowConfigurationError
from piton.stores._redact import scrub, secrets_of
from piton.stores.base import RunRecord, open_store, redact_url
from piton.stores.memory import MemoryStore
from piton.stores.postgres import PostgresStore
from piton.stores.redis import RedisStore
from piton.stores.sqlite import SqliteStore

SECRET = "s3cret"


def shown(error: BaseException) -> str:
    """What a log of the error shows of it and of every error chained to it, as a traceback
    prints them (the cause, else the context unless suppressed); source lines left out."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        parts += traceback.format_exception_only(type(current), current)
        parts.append(repr(current.args))
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return "".join(parts)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://u:s3cret@h/db", "postgresql://u:***@h/db"),
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db?password=***"),
        ("redis://h?password=s3cret", "redis://h?password=***"),
        ("redis://h/0?prefix=p&PassWord=s3cret&x=1", "redis://h/0?prefix=p&PassWord=***&x=1"),
        ("postgresql://h/db?pwd=s3cret&passwd=s3cret", "postgresql://h/db?pwd=***&passwd=***"),
        ("postgresql://h/db?sslpassword=s3cret", "postgresql://h/db?sslpassword=***"),
        ("postgresql://h/db?pass%77ord=s3cret", "postgresql://h/db?pass%77ord=***"),
        ("postgresql+psycopg://u:s3cret@h/db", "postgresql+psycopg://u:***@h/db"),
        ("mysql://u:s3cret@h/db", "mysql://u:***@h/db"),
        ("postgresql://u:s3c@ret/x@h/db", "postgresql://u:***@h/db"),  # '@' and '/' unencoded
        ("host=h password=s3cret dbname=d", "host=h password=*** dbname=d"),
        ("host=h password='s3c ret' dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = 's3\\' ret' dbname=d", "host=h password = *** dbname=d"),
        ("host=h PASSWORD=s3cret", "host=h PASSWORD=***"),
        ("postgresql://u@h/db?sslmode=require", "postgresql://u@h/db?sslmode=require"),
        ("sqlite:///runs.db", "sqlite:///runs.db"),
        ("memory://", "memory://"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert "s3" not in redacted


def test_a_message_holding_urls_is_redacted_and_the_rest_kept() -> None:
    text = "Store URL 'redis://:s3cret@h/0' and 'postgresql://u@h/d?password=s3cret', user@host"
    assert redact_url(text) == (
        "Store URL 'redis://:***@h/0' and 'postgresql://u@h/d?password=***', user@host"
    )


def test_scrub_masks_known_passwords_and_quoted_pieces_of_them() -> None:
    secrets = secrets_of("postgresql://u:p%zzs3cret@h/db")
    assert scrub('invalid percent-encoded token: "p%zzs3cret"', secrets) == (
        'invalid percent-encoded token: "***"'
    )
    assert scrub('missing "=" after "zzs3c"', secrets) == 'missing "=" after "***"'
    assert scrub("nothing secret here", secrets) == "nothing secret here"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:s3cret@h/db",
        "mysql://u:s3cret@h/db?password=s3cret",
        "host=h password=s3cret dbname=d",
        "redis+sentinel://:s3cret@h/0",
    ],
)
def test_an_unknown_store_url_is_named_without_its_password(url: str) -> None:
    with pytest.raises(WorkflowConfigurationError, match="Unknown store URL") as info:
        open_store(url)
    assert SECRET not in shown(info.value)


def test_a_bad_sqlite_url_is_named_without_its_password() -> None:
    with pytest.raises(WorkflowConfigurationError, match="unknown option") as info:
        SqliteStore.from_url("sqlite:///runs.db?password=s3cret")
    assert SECRET not in shown(info.value)


def test_store_reprs_show_no_password() -> None:
    stores = [
        PostgresStore("postgresql://u:s3cret@db.example/runs"),
        PostgresStore("postgresql://u@db.example/runs?password=s3cret"),
        RedisStore("redis://:s3cret@cache.example:6380/0"),
        RedisStore("redis://cache.example/0?password=s3cret"),
        MemoryStore(),
    ]
    for store in stores:
        for text in (repr(store), str(store), store.url, store.identity):
            assert SECRET not in text, text
        assert type(store).__name__ in repr(store)
    connector = stores[0]._connector  # type: ignore[attr-defined]
    assert SECRET not in repr(connector), "the Connector's repr shows its conninfo"


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
async def test_postgres_errors_show_no_password() -> None:
    for url in (
        "postgresql://postgres:s3cret@127.0.0.1:1/test",
        "postgresql://postgres@127.0.0.1:1/test?password=s3cret",
    ):
        s = PostgresStore(url)
        with pytest.raises(StoreUnavailable, match="cannot be reached") as info:
            await s.get("r")
        assert SECRET not in shown(info.value)
        await s.close()


def test_a_libpq_error_quoting_the_password_is_scrubbed_and_not_chained() -> None:
    with pytest.raises(WorkflowConfigurationError, match="percent-encoded") as info:
        PostgresStore("postgresql://u:p%zzs3cret@h/db")
    assert SECRET not in shown(info.value)
    assert info.value.__cause__ is None


def test_a_psycopg_error_holding_the_password_is_scrubbed_and_not_chained() -> None:
    from piton.stores._postgres_engine import translate

    where = "PostgreSQL store 'postgresql://u:***@h/db'"
    secret = psycopg.OperationalError("could not connect with password s3cret to h")
    translated = translate(secret, where, secrets_of("postgresql://u:s3cret@h/db"))
    assert isinstance(translated, StoreUnavailable) and translated.__cause__ is None
    assert SECRET not in shown(translated) and "password *** to h" in str(translated)
    plain = psycopg.OperationalError("connection refused")
    assert translate(plain, where, ("s3cret",)).__cause__ is plain


async def test_postgres_with_a_password_works_and_its_errors_hide_it(postgres_url: str) -> None:
    schema = f"piton_test_{uuid.uuid4().hex[:12]}"
    url = postgres_url.replace("postgres@", "postgres:s3cret@") + f"?schema={schema}"
    s = PostgresStore(url)  # the test server trusts local logins: the password is not checked
    try:
        assert await s.create(RunRecord("r", "wf", "queued"), [], [])
        with pytest.raises(RunNotFound) as missing:
            await s.load("nothing")
        assert SECRET not in shown(missing.value)
        await s.deliver("r", "{}")  # not stuck, for the teardown check
    finally:
        await s.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    with pytest.raises(WorkflowConfigurationError, match="nonsense") as info:
        PostgresStore(url + "&nonsense=1")  # an unknown libpq option: named, without the password
    assert SECRET not in shown(info.value)


# --- Redis ------------------------------------------------------------------------------------


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
async def test_redis_errors_show_no_password() -> None:
    for url in ("redis://:s3cret@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=s3cret"):
        s = RedisStore(url)
        with pytest.raises(StoreUnavailable, match="cannot be reached") as info:
            await s.get("r")
        assert SECRET not in shown(info.value)
        await s.close()


@pytest.mark.allow_stuck_runs  # its store cannot be opened: no stuck-run check after it
async def test_a_refused_redis_login_shows_no_password(redis_url: str) -> None:
    url = redis_url.replace("redis://", "redis://nobody:s3cret@")
    s = RedisStore(url)
    with pytest.raises(StoreError, match="refused the login") as info:
        await s.open()
    assert SECRET not in shown(info.value)
    await s.close()


def test_a_redis_url_error_shows_no_password() -> None:
    with pytest.raises(WorkflowConfigurationError, match="Port") as info:
        RedisStore("redis://:s3cret@h:port/0")
    assert SECRET not in shown(info.value)


def test_a_redis_error_holding_the_password_is_scrubbed_and_not_chained() -> None:
    from piton.stores._redis_engine import translate

    error = redis.exceptions.ConnectionError("AUTH s3cret failed on redis://:s3cret@h")
    translated = translate(error, "Redis store 'h'", secrets=secrets_of("redis://:s3cret@h"))
    assert isinstance(translated, StoreUnavailable) and translated.__cause__ is None
    assert SECRET not in shown(translated)


async def test_a_redis_client_repr_shows_no_password(redis_url: str) -> None:
    s = RedisStore(redis_url.replace("redis://", "redis://:s3cret@") + "?prefix=piton_repr")
    engine = await s._engine()
    try:
        for thing in (engine.client, engine.client.connection_pool, engine.writer, s):
            assert SECRET not in repr(thing), repr(thing)
    finally:
        await s.close()
