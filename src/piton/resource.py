"""Resources: objects (clients, connections, settings) injected into steps, never serialized.

    @step
    async def fetch(self, ev: StartEvent, redis: Annotated[Redis, Resource(get_redis)]) -> StopEvent:

The factory (sync or async) runs the first time a step needs the resource; with
``cache=True`` (the default) the same object is reused by every step and run of that
workflow instance. A factory may take resources itself, declared the same way::

    def get_cache(redis: Annotated[Redis, Resource(get_redis)]) -> Cache: ...

They are made first (recursively); a cycle of factories is refused, naming the chain.

``ResourceConfig(config_file="settings.json", path_selector="llm")`` is a resource read
from a JSON file into the pydantic model the parameter is annotated with
(``Annotated[LlmSettings, ResourceConfig(...)]``); ``path_selector`` is a dotted path of
keys to the object to read (``"models.llm"``), each of which must hold an object.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ValidationError

from .errors import WorkflowConfigurationError


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

    @property
    def key(self) -> Hashable:
        """What the resource is cached under in a workflow instance."""
        return self.factory

    def dependencies(self) -> list[tuple[str, Resource]]:
        """The factory's own ``Annotated[T, Resource(...)]`` parameters, in order."""
        try:
            params = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            return []
        try:
            hints = get_type_hints(self.factory, include_extras=True)
        except Exception as exc:  # noqa: BLE001 - a name the annotations use is not defined
            for param in params.values():
                if isinstance(param.annotation, str) and "Resource" in param.annotation:
                    raise WorkflowConfigurationError(
                        f"Resource factory {self.name}: cannot read the annotation of its "
                        f"parameter '{param.name}' ({exc}). Define the names it uses at "
                        "module level, where the factory's annotations are resolved."
                    ) from exc
            hints = {}
        found: list[tuple[str, Resource]] = []
        for param in params.values():
            hint = hints.get(param.name, param.annotation)
            if get_origin(hint) is not Annotated:
                continue
            marks = [m for m in hint.__metadata__ if isinstance(m, Resource)]
            if marks:
                bind_type(marks[0], get_args(hint)[0])
                found.append((param.name, marks[0]))
        return found

    async def create(self, args: dict[str, Any]) -> Any:
        value = self.factory(**args)
        if inspect.isawaitable(value):
            value = await value
        return value

    def __repr__(self) -> str:
        return f"Resource({self.name}, cache={self.cache})"


class _ResourceConfig(Resource):
    """A resource read from a JSON file into a pydantic model (see ``ResourceConfig``)."""

    __slots__ = ("config_file", "description", "label", "model", "path_selector")

    def __init__(
        self,
        config_file: str,
        path_selector: str | None = None,
        label: str | None = None,
        description: str | None = None,
    ) -> None:
        if Path(config_file).suffix != ".json":
            raise WorkflowConfigurationError(
                f"ResourceConfig(config_file={config_file!r}): only JSON files can be read "
                "into pydantic models; give a path ending in .json."
            )
        super().__init__(self._read, cache=True)
        self.config_file = config_file
        self.path_selector = path_selector
        self.label = label
        self.description = description
        self.model: type[BaseModel] | None = None

    @property
    def name(self) -> str:
        if self.path_selector is None:
            return self.config_file
        return f"{self.config_file}.{self.path_selector}"

    @property
    def key(self) -> Hashable:
        return (str(Path(self.config_file).resolve()), self.path_selector, self.model)

    def dependencies(self) -> list[tuple[str, Resource]]:
        return []

    def _read(self) -> BaseModel:
        where = f"ResourceConfig {self.name!r}"
        if self.model is None:
            raise WorkflowConfigurationError(
                f"{where}: annotate the parameter with the model to read it into, "
                "`Annotated[MySettings, ResourceConfig(...)]` (a pydantic BaseModel)."
            )
        path = Path(self.config_file)
        if not path.is_file():
            raise WorkflowConfigurationError(
                f"{where}: no such file {str(path.resolve())!r}. Relative paths are read "
                "from the current directory."
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise WorkflowConfigurationError(f"{where}: cannot read it as JSON: {exc}") from exc
        walked: list[str] = []
        for part in (self.path_selector or "").split(".") if self.path_selector else []:
            walked.append(part)
            data = data.get(part) if isinstance(data, dict) else None
            if not isinstance(data, dict):
                raise WorkflowConfigurationError(
                    f"{where}: expected an object at path {'.'.join(walked)!r} of "
                    f"{self.config_file}, got {type(data).__name__}."
                )
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise WorkflowConfigurationError(
                f"{where} does not fit {self.model.__name__}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"ResourceConfig({self.name!r})"


def ResourceConfig(  # noqa: N802 - a function, named as llama-index-workflows names it
    config_file: str,
    path_selector: str | None = None,
    label: str | None = None,
    description: str | None = None,
) -> _ResourceConfig:
    """A resource read from the JSON file ``config_file`` into the annotated pydantic model:
    ``Annotated[MySettings, ResourceConfig("settings.json", path_selector="llm")]``.

    ``path_selector`` is a dotted path of keys to the object to read; ``label`` and
    ``description`` are for people reading the workflow. Always cached."""
    return _ResourceConfig(config_file, path_selector, label, description)


def bind_type(resource: Resource, annotation: Any) -> None:
    """Tell a ``ResourceConfig`` the model its parameter is annotated with."""
    if isinstance(resource, _ResourceConfig) and resource.model is None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            resource.model = annotation


def bind_step_types(
    func: Callable[..., Any], resources: Iterable[tuple[str, Resource]], localns: dict[str, Any]
) -> None:
    """Bind the models of the ``ResourceConfig`` parameters of the step ``func``:
    ``resources`` are the step's (parameter, resource) pairs, as its spec holds them."""
    try:
        hints = get_type_hints(func, localns=localns, include_extras=True)
    except Exception:  # noqa: BLE001 - the step's build reports unresolvable hints
        return
    for param, resource in resources:
        hint = hints.get(param)
        if get_origin(hint) is Annotated:
            bind_type(resource, get_args(hint)[0])


def find_cycle(resource: Resource) -> list[str] | None:
    """The names along a cycle of factory dependencies from ``resource``, if there is one."""
    chain: list[Resource] = []
    done: set[Hashable] = set()

    def visit(res: Resource) -> list[str] | None:
        keys = [r.key for r in chain]
        if res.key in keys:
            return [r.name for r in chain[keys.index(res.key) :]] + [res.name]
        if res.key in done:
            return None
        chain.append(res)
        for _, dep in res.dependencies():
            cycle = visit(dep)
            if cycle is not None:
                return cycle
        chain.pop()
        done.add(res.key)
        return None

    return visit(resource)


class ResourceManager:
    """Creates and caches the resources of one workflow instance."""

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._acyclic: set[Hashable] = set()

    async def get(self, resource: Resource) -> Any:
        if resource.key not in self._acyclic:
            cycle = find_cycle(resource)  # before any lock: a cycle would deadlock on them
            if cycle is not None:
                raise WorkflowConfigurationError(
                    f"Circular resource dependency: {' -> '.join(cycle)}. A resource factory "
                    "cannot need itself, directly or through the resources it takes."
                )
            self._acyclic.add(resource.key)
        return await self._get(resource, {})

    async def _get(self, resource: Resource, made: dict[Hashable, Any]) -> Any:
        """``made``: values of this one resolution, so an uncached resource two factories
        need is made once for both."""
        key = resource.key
        if not resource.cache:
            if key not in made:
                made[key] = await self._create(resource, made)
            return made[key]
        if key in self._values:
            return self._values[key]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._values:
                self._values[key] = await self._create(resource, made)
        return self._values[key]

    async def _create(self, resource: Resource, made: dict[Hashable, Any]) -> Any:
        args = {name: await self._get(dep, made) for name, dep in resource.dependencies()}
        return await resource.create(args)


Located = tuple[str, str, Resource]  # (step, parameter, resource)


def check_configs(resources: list[Located]) -> list[str]:
    """Read every ``ResourceConfig`` the steps take, or their factories take; one message
    per failure, naming the step, the parameter and the chain of factories."""
    errors: list[str] = []
    seen: set[Hashable] = set()
    todo = [(step, param, res, [res.name]) for step, param, res in resources]
    while todo:
        step, param, res, chain = todo.pop()
        if res.key in seen:
            continue
        seen.add(res.key)
        todo += [(step, param, dep, [*chain, dep.name]) for _, dep in res.dependencies()]
        if isinstance(res, _ResourceConfig):
            try:
                res._read()
            except WorkflowConfigurationError as exc:
                errors.append(
                    f"In step '{step}', parameter '{param}' ({' -> '.join(chain)}): {exc}"
                )
    return errors


def check_factories(resources: list[Located]) -> list[str]:
    """Make every resource with a fresh manager (values made on a throw-away event loop
    are not kept for runs); one message per failure, cycles included."""

    async def make_all() -> list[str]:
        manager = ResourceManager()
        errors: list[str] = []
        for step, param, res in resources:
            try:
                await manager.get(res)
            except Exception as exc:  # noqa: BLE001 - reported, with where it happened
                errors.append(f"In step '{step}', parameter '{param}': {exc}")
        return errors

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_all())
    # called from async code: make them on a loop of their own, in a thread
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="piton-validate") as pool:
        return pool.submit(asyncio.run, make_all()).result()


__all__ = [
    "Resource",
    "ResourceConfig",
    "ResourceManager",
    "bind_step_types",
    "check_configs",
    "check_factories",
    "find_cycle",
]
