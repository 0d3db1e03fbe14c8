"""The layers only import downwards (DESIGN.md section 3):

    _core  <-  stores  <-  _runtime  <-  public modules  <-  cli, server

``piton._core`` is pure: no asyncio, clock, randomness, ids or threads, and nothing from
the layers above it. ``piton.stores`` holds data: no runtime, no public module.
``piton._runtime`` gets a workflow as an Engine: it imports no public module
(``workflow``, ``context``, ``handler``, ``decorators``, ...). The tests read the source
with ``ast`` (relative imports resolved, ``TYPE_CHECKING`` and in-function imports
included), and check that ruff's banned-api guards ``_core`` and ``_runtime`` too.
"""

from __future__ import annotations

import ast
import fnmatch
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = SRC / "piton"

CORE_BANNED = (
    "asyncio",
    "time",
    "random",
    "uuid",
    "threading",
    "piton._runtime",
    "piton.stores",
    "piton.cli",
    "piton.server",
)
# the public modules: what users import, built on the runtime
PUBLIC = (
    "piton.workflow",
    "piton.context",
    "piton.handler",
    "piton.decorators",
    "piton.worker",
    "piton.views",
    "piton.resource",
    "piton.testing",
    "piton._compile",
    "piton._waits",
)
TOP = ("piton.cli", "piton.server")
RUNTIME_BANNED = (*PUBLIC, *TOP)
STORES_BANNED = ("piton._runtime", *PUBLIC, *TOP)
RUFF_BANNED = ("asyncio", "time", "random", "uuid")
RUFF_RUNTIME_BANNED = ("piton.workflow", "piton.context", "piton.handler", "piton.decorators")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, *, is_package: bool) -> Iterator[tuple[int, str]]:
    """Every module name the code may import, as (line, dotted name).

    ``from a import b`` yields both ``a`` and ``a.b``, since ``b`` may be a module;
    relative imports are resolved against ``module``.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:  # importlib.import_module("x")
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    yield node.lineno, first.value


def banned_names(names: list[str], banned: tuple[str, ...]) -> list[str]:
    """The names that are, or are inside, a banned module. ``piton`` itself (``from piton
    import x``, which runs the package's __init__ and so imports every public module) is
    banned wherever a public module is."""
    hits = [n for n in names for b in banned if n == b or n.startswith(b + ".")]
    if any(b in PUBLIC for b in banned):
        hits += [n for n in names if n == "piton"]
    return hits


def violations(path: Path, banned: tuple[str, ...]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = module_name(path)
    found = []
    for line, name in imported_names(tree, module, is_package=path.name == "__init__.py"):
        if banned_names([name], banned):
            found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return sorted(set(found))


def modules(subpackage: str) -> list[Path]:
    paths = sorted((PACKAGE / subpackage).rglob("*.py"))
    assert paths, f"no modules under {PACKAGE / subpackage}"
    return paths


def test_core_is_pure_and_imports_no_upper_layer() -> None:
    found = [v for path in modules("_core") for v in violations(path, CORE_BANNED)]
    assert not found, "piton._core must stay pure:\n" + "\n".join(found)


def test_runtime_imports_no_public_module() -> None:
    found = [v for path in modules("_runtime") for v in violations(path, RUNTIME_BANNED)]
    assert not found, (
        "piton._runtime must not import the public modules, the cli or the server (it gets "
        "a workflow as an Engine):\n" + "\n".join(found)
    )


def test_stores_import_neither_runtime_nor_public_modules() -> None:
    found = [v for path in modules("stores") for v in violations(path, STORES_BANNED)]
    assert not found, "piton.stores hold data; they import no layer above:\n" + "\n".join(found)


def test_public_modules_do_not_import_cli_or_server() -> None:
    # ``python -m piton`` (``__main__``) is the command itself: the top layer
    public = [p for p in sorted(PACKAGE.glob("*.py")) if p.name != "__main__.py"]
    found = [v for path in public for v in violations(path, TOP)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("module", "code", "bad"),
    [
        ("piton._runtime.runner", "from piton.workflow import Workflow", "piton.workflow*"),
        ("piton._runtime.runner", "from ..context import Context", "piton.context*"),
        ("piton._runtime.runner", "from .. import handler", "piton.handler"),
        ("piton._runtime.runner", "from piton import Context", "piton"),
        ("piton._runtime.runner", "import piton.decorators", "piton.decorators"),
        ("piton._runtime.durable", "from piton._runtime.engine import Engine", None),
        ("piton._runtime.durable", "from piton.stores.base import Store", None),
        ("piton._runtime.durable", "from piton.events import Event", None),
    ],
)
def test_the_runtime_check_catches_a_public_import(
    module: str, code: str, bad: str | None
) -> None:
    tree = ast.parse(code)
    names = [n for _, n in imported_names(tree, module, is_package=False)]
    hits = banned_names(names, RUNTIME_BANNED)
    if bad is None:
        assert not hits, hits
    else:
        assert any(fnmatch.fnmatchcase(h, bad) for h in hits), (names, hits)


@pytest.mark.parametrize(
    ("module", "code", "bad"),
    [
        ("piton._core.reducer", "import time", "time"),
        ("piton._core.reducer", "import asyncio.tasks as t", "asyncio.tasks"),
        ("piton._core.reducer", "from random import Random", "random"),
        ("piton._core.reducer", "from .._runtime import runner", "piton._runtime"),
        ("piton._core.reducer", "from .. import stores", "piton.stores"),
        ("piton._core.reducer", "from ..server.app import App", "piton.server.app"),
        ("piton._core.reducer", "from piton import cli", "piton.cli"),
        ("piton._core", "from ._runtime import x", None),  # piton._core._runtime: allowed
        ("piton._core.reducer", "from . import state", None),
        ("piton._core.reducer", "import importlib; importlib.import_module('uuid')", "uuid"),
        ("piton._core.reducer", "import timeit", None),
    ],
)
def test_the_import_check_catches_what_it_should(module: str, code: str, bad: str | None) -> None:
    """The checker itself: relative imports resolve, prefixes do not over-match."""
    tree = ast.parse(code)
    names = [n for _, n in imported_names(tree, module, is_package=module == "piton._core")]
    hits = [n for n in names for b in CORE_BANNED if n == b or n.startswith(b + ".")]
    if bad is None:
        assert not hits, hits
    else:
        assert any(fnmatch.fnmatchcase(h, bad) for h in hits), (names, hits)


# --- ruff's banned-api -----------------------------------------------------------------


def ruff_config() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        lint: dict[str, object] = tomllib.load(f)["tool"]["ruff"]["lint"]
    return lint


def test_ruff_bans_the_impure_modules() -> None:
    lint = ruff_config()
    selected = lint["select"]
    assert isinstance(selected, list)
    assert any(code in ("TID", "TID2", "TID25", "TID251", "ALL") for code in selected)
    banned = lint["flake8-tidy-imports"]["banned-api"]  # type: ignore[index]
    for name in RUFF_BANNED:
        assert name in banned and banned[name]["msg"], f"banned-api lacks {name!r}"


def test_no_per_file_ignore_lifts_the_ban_in_core() -> None:
    ignores = ruff_config().get("per-file-ignores", {})
    assert isinstance(ignores, dict)
    lifting = [
        f"{pattern} matches {path.relative_to(ROOT)}"
        for pattern, codes in ignores.items()
        if any("TID251".startswith(c) for c in codes)
        for path in modules("_core")
        if fnmatch.fnmatchcase(str(path.relative_to(ROOT)), pattern)
    ]
    assert not lifting, "\n".join(sorted(set(lifting)))


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("ruff is not installed")
    return [exe]


def test_ruff_bans_the_public_modules_in_runtime() -> None:
    """src/piton/_runtime/ruff.toml extends the project's config with its own bans."""
    with (PACKAGE / "_runtime" / "ruff.toml").open("rb") as f:
        config = tomllib.load(f)
    assert config["extend"] == "../../../pyproject.toml"
    banned = config["lint"]["flake8-tidy-imports"]["banned-api"]
    for name in RUFF_RUNTIME_BANNED:
        assert name in banned and banned[name]["msg"], f"_runtime/ruff.toml lacks {name!r}"
    assert not config["lint"]["per-file-ignores"], "nothing may lift the ban in _runtime"


@pytest.mark.parametrize("probe", ["from piton.workflow import Workflow", "from piton import context"])
def test_ruff_flags_a_public_import_in_runtime(probe: str) -> None:
    cmd = [*_ruff(), "check", "--no-cache", "--select", "TID251", "--output-format", "concise"]
    result = subprocess.run(
        [*cmd, "--stdin-filename", "src/piton/_runtime/_probe.py", "-"],
        input=f"{probe}\n\nprint({probe.split()[-1]})\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert "TID251" in result.stdout, result.stdout + result.stderr


def test_ruff_flags_an_impure_import_in_core() -> None:
    """Ask ruff itself, with the project's config, about a probe file in _core."""
    probe = "import time\n\nprint(time)\n"
    cmd = [*_ruff(), "check", "--no-cache", "--select", "TID251", "--output-format", "concise"]
    result = subprocess.run(
        [*cmd, "--stdin-filename", "src/piton/_core/_probe.py", "-"],
        input=probe,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert "TID251" in result.stdout, result.stdout + result.stderr
