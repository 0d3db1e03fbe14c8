"""Resources: objects (clients, connections) injected into steps, never serialized.

    @step
    async def fetch(self, ev: StartEvent, redis: Annotated[Redis, Resource(get_redis)]) -> StopEvent:

The factory (sync or async, called without arguments) runs the first time a step needs
the resource; with ``cache=True`` (the default) the same object is reused by every step
and run of that workflow instance.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


class Resource:
    """Marks a step parameter as injected: ``Annotated[T, Resource(factory)]``."""

    __slots__ = ("cache", "factory")

    def __init__(self, factory: Callable[..., Any], cache: bool = True) -> None:
        if not callable(factory):
            raise TypeError(f"Resource() needs a callable factory, got {factory!r}")
        self.factory = factory
        self.cache = cache

    @property
    def name(self) -> str:
        return getattr(self.factory, "__qualname__", repr(self.factory))

    def __repr__(self) -> str:
        return f"Resource({self.name}, cache={self.cache})"


class ResourceManager:
    """Creates and caches the resources of one workflow instance."""

    def __init__(self) -> None:
        self._values: dict[Callable[..., Any], Any] = {}
        self._locks: dict[Callable[..., Any], asyncio.Lock] = {}

    async def get(self, resource: Resource) -> Any:
        if not resource.cache:
            return await self._create(resource)
        key = resource.factory
        if key in self._values:
            return self._values[key]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._values:
                self._values[key] = await self._create(resource)
        return self._values[key]

    @staticmethod
    async def _create(resource: Resource) -> Any:
        value = resource.factory()
        if inspect.isawaitable(value):
            value = await value
        return value


__all__ = ["Resource", "ResourceManager"]
