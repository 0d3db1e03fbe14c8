"""A fresh, private store per test or schedule: a new SQLite file, a Postgres schema
``t_<hex>`` or a Redis key prefix ``t_<hex>``, so tests never see each other's runs."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from piton.stores import open_store
from piton.stores.base import Store

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
KINDS = ("sqlite", "postgres", "redis")


def new_url(kind: str, directory: Path, base: str | None = None) -> str:
    tag = "t_" + uuid.uuid4().hex[:12]
    if kind == "sqlite":
        return f"sqlite:///{directory / (tag + '.db')}"
    if kind == "postgres":
        return f"{base or POSTGRES}?schema={tag}"
    if kind == "redis":
        return f"{base or REDIS}?prefix={tag}"
    raise ValueError(f"unknown store kind {kind!r}")


def kind_of(url: str) -> str:
    return url.split(":", 1)[0].replace("postgresql", "postgres")


def open_with_lease(url: str, lease: float | None = None) -> Store:
    """The store for ``url``; ``lease`` (seconds) replaces the store's default lease."""
    store = open_store(url)
    if lease is not None:
        store.lease = float(lease)
    return store


def drop(url: str) -> None:
    """Delete what a test left in a shared server (a SQLite file goes with tmp_path)."""
    kind = kind_of(url)
    base, _, option = url.partition("?")
    tag = option.partition("=")[2]
    if kind == "postgres":
        import psycopg
        from psycopg import sql

        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(tag)))
    elif kind == "redis":
        import redis

        client = redis.Redis.from_url(base)
        try:
            keys = list(client.scan_iter(match=f"{tag}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()


async def _with_store(url: str, fn):  # type: ignore[no-untyped-def]
    store = open_store(url)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def query(url: str, fn):  # type: ignore[no-untyped-def]
    """Run ``await fn(store)`` on a store of its own, from synchronous test code."""
    return asyncio.run(_with_store(url, fn))
