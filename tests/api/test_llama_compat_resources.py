"""Resources as in llama-index-workflows: ``ResourceConfig`` (a pydantic model read from a
JSON file, with ``path_selector``), factories that take resources themselves (made first,
recursively; cycles refused and named), and ``Workflow.validate(validate_resources=,
validate_resource_configs=)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel

from piton import Resource, StartEvent, StopEvent, Workflow, step
from piton.errors import WorkflowConfigurationError, WorkflowValidationError
from piton.resource import ResourceConfig, ResourceManager, find_cycle


class Llm(BaseModel):
    model: str
    temperature: float = 0.0


def write(tmp_path: Path, data: object) -> str:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(data))
    return str(path)


# -- ResourceConfig --------------------------------------------------------------------


async def test_a_config_is_read_into_the_annotated_model(tmp_path: Path) -> None:
    file = write(tmp_path, {"model": "small", "temperature": 0.5})

    class Uses(Workflow):
        @step
        async def only(
            self, ev: StartEvent, llm: Annotated[Llm, ResourceConfig(file)]
        ) -> StopEvent:
            return StopEvent(result=llm)

    assert await Uses().run() == Llm(model="small", temperature=0.5)


async def test_path_selector_walks_dotted_keys(tmp_path: Path) -> None:
    file = write(tmp_path, {"models": {"llm": {"model": "big"}}, "other": 1})

    class Uses(Workflow):
        @step
        async def only(
            self,
            ev: StartEvent,
            llm: Annotated[Llm, ResourceConfig(file, path_selector="models.llm")],
        ) -> StopEvent:
            return StopEvent(result=llm.model)

    assert await Uses().run() == "big"


async def test_a_selector_reaching_a_non_object_is_named(tmp_path: Path) -> None:
    file = write(tmp_path, {"models": {"llm": 3}})

    class Uses(Workflow):
        @step
        async def only(
            self,
            ev: StartEvent,
            llm: Annotated[Llm, ResourceConfig(file, path_selector="models.llm")],
        ) -> StopEvent:
            return StopEvent(result=llm.model)

    with pytest.raises(WorkflowConfigurationError, match="expected an object at path 'models.llm'"):
        await Uses().run()
    with pytest.raises(WorkflowValidationError, match="parameter 'llm'.*models.llm"):
        Uses().validate()


def test_only_json_files() -> None:
    with pytest.raises(WorkflowConfigurationError, match="ending in .json"):
        ResourceConfig("settings.yaml")


def test_validate_reads_configs_by_default_and_can_skip_them(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.json")
    bad = write(tmp_path, {"temperature": 1})

    class Broken(Workflow):
        @step
        async def a(
            self, ev: StartEvent, llm: Annotated[Llm, ResourceConfig(missing)]
        ) -> StopEvent:
            return StopEvent(result=None)

    class Invalid(Workflow):
        @step
        async def a(self, ev: StartEvent, llm: Annotated[Llm, ResourceConfig(bad)]) -> StopEvent:
            return StopEvent(result=None)

    with pytest.raises(WorkflowValidationError, match="In step 'a', parameter 'llm'.*no such file"):
        Broken().validate()
    with pytest.raises(WorkflowValidationError, match="does not fit Llm"):
        Invalid().validate()
    assert Broken().validate(validate_resource_configs=False) is False


# -- factories taking resources ----------------------------------------------------------


class Client:
    def __init__(self, llm: Llm, token: str) -> None:
        self.llm = llm
        self.token = token


made: list[str] = []


def get_token() -> str:
    made.append("token")
    return "t-1"


async def get_client(
    token: Annotated[str, Resource(get_token)],
) -> Client:
    made.append("client")
    return Client(Llm(model="m"), token)


async def test_a_factory_gets_its_own_resources_first() -> None:
    made.clear()

    class Uses(Workflow):
        @step
        async def only(
            self,
            ev: StartEvent,
            client: Annotated[Client, Resource(get_client)],
            token: Annotated[str, Resource(get_token)],
        ) -> StopEvent:
            return StopEvent(result=(client.token, token))

    w = Uses()
    assert await w.run() == ("t-1", "t-1")
    assert await w.run() == ("t-1", "t-1")
    assert made == ["token", "client"]  # each made once, the dependency first, both cached


def get_llm_name(llm: Annotated[Llm, ResourceConfig("settings.json")]) -> str:
    return llm.model


async def test_a_factory_can_take_a_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, {"model": "cfg"})
    monkeypatch.chdir(tmp_path)  # a relative config_file is read from the current directory

    class Uses(Workflow):
        @step
        async def only(
            self, ev: StartEvent, name: Annotated[str, Resource(get_llm_name)]
        ) -> StopEvent:
            return StopEvent(result=name)

    assert Uses().validate() is False  # the config a factory takes is read too
    assert await Uses().run() == "cfg"


count: list[int] = []


def fresh() -> int:
    count.append(1)
    return len(count)


def left(n: Annotated[int, Resource(fresh, cache=False)]) -> int:
    return n


def both(
    a: Annotated[int, Resource(left, cache=False)],
    b: Annotated[int, Resource(fresh, cache=False)],
) -> tuple[int, int]:
    return (a, b)


async def test_an_uncached_dependency_is_made_once_per_resolution() -> None:
    count.clear()
    manager = ResourceManager()
    assert await manager.get(Resource(both, cache=False)) == (1, 1)
    assert await manager.get(Resource(both, cache=False)) == (2, 2)


async def test_a_factory_annotation_naming_an_undefined_name_is_explained() -> None:
    def local() -> int:
        return 1

    def needs(n: Annotated[int, Resource(local)]) -> int:  # 'local' is not module-level
        return n

    with pytest.raises(WorkflowConfigurationError, match="parameter 'n'.*module level"):
        await ResourceManager().get(Resource(needs))


# the factories of a cycle, at module level so their annotations resolve
def ping(p: Annotated[str, Resource(lambda: "x")]) -> str:
    return p


def first(x: Annotated[str, Resource(lambda: "unused")]) -> str:
    return x


def second(x: Annotated[str, Resource(first)]) -> str:
    return x


# close the cycle first -> second -> first after both exist
first.__annotations__["x"] = Annotated[str, Resource(second)]


def test_find_cycle_names_the_chain() -> None:
    assert find_cycle(Resource(ping)) is None
    assert find_cycle(Resource(first)) == ["first", "second", "first"]


async def test_a_cycle_is_refused_when_the_resource_is_needed_and_by_validate() -> None:
    class Loop(Workflow):
        @step
        async def only(self, ev: StartEvent, x: Annotated[str, Resource(first)]) -> StopEvent:
            return StopEvent(result=x)

    with pytest.raises(
        WorkflowConfigurationError, match="Circular resource dependency: first -> second -> first"
    ):
        await Loop().run()
    assert Loop().validate() is False  # factories are not made by default
    with pytest.raises(
        WorkflowValidationError, match="parameter 'x': Circular resource dependency"
    ):
        Loop().validate(validate_resources=True)


def test_validate_resources_reports_a_failing_factory() -> None:
    def broken() -> str:
        raise RuntimeError("no credentials")

    class Uses(Workflow):
        @step
        async def only(self, ev: StartEvent, x: Annotated[str, Resource(broken)]) -> StopEvent:
            return StopEvent(result=x)

    with pytest.raises(
        WorkflowValidationError, match="In step 'only', parameter 'x': no credentials"
    ):
        Uses().validate(validate_resources=True)
