"""Every ```python block in README.md and docs/*.md runs (STYLE.md rule 11).

The blocks of one file run in order in one module namespace, like a script read top to
bottom. A block may use top-level ``await``: it runs on an event loop kept for the whole
file, so objects made in one block (a handler, a context) work in the next. Blocks
without ``await`` run as plain code, so they may call ``asyncio.run`` or ``run_sync``.
A block fenced as ```python no-run is shown but not run.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    number: int  # 1-based among the file's python blocks
    line: int  # 1-based line of the first code line
    code: str
    run: bool

    def where(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown} block {self.number} (line {self.line})"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a markdown file, in order."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    n = 0
    while n < len(lines):
        m = FENCE.match(lines[n])
        if not m:
            n += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        words = m["info"].strip().split()
        end = n + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence) and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        if words and words[0] in ("python", "py"):
            body = [
                line[indent:] if line[:indent].isspace() else line for line in lines[n + 1 : end]
            ]
            blocks.append(
                Block(
                    path=path,
                    number=len(blocks) + 1,
                    line=n + 2,
                    code="\n".join(body) + "\n",
                    run="no-run" not in words[1:],
                )
            )
        n = end + 1
    return blocks


def run_blocks(path: Path) -> int:
    """Run a file's blocks in one namespace; fail naming the block that broke. Returns the count run."""
    blocks = [b for b in python_blocks(path) if b.run]
    name = "_piton_docs_" + re.sub(r"\W", "_", path.stem)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    runner = asyncio.Runner()
    try:
        for block in blocks:
            source = "\n" * (block.line - 1) + block.code  # tracebacks show markdown lines
            try:
                code = compile(source, str(path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                if code.co_flags & inspect.CO_COROUTINE:
                    runner.run(eval(code, module.__dict__))
                else:
                    exec(code, module.__dict__)
            except BaseException as exc:  # noqa: BLE001 - report any failure with its block
                if isinstance(exc, KeyboardInterrupt):
                    raise
                detail = "".join(traceback.format_exception(exc))
                pytest.fail(f"{block.where()} failed:\n{detail}", pytrace=False)
    finally:
        runner.close()
        sys.modules.pop(name, None)
    return len(blocks)


DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_python_blocks_run(path: Path) -> None:
    run_blocks(path)


def test_readme_and_guide_have_python_blocks() -> None:
    assert python_blocks(ROOT / "README.md"), "README.md has no ```python block to run"
    guide = ROOT / "docs" / "guide-core.md"
    assert len([b for b in python_blocks(guide) if b.run]) >= 5


def test_a_failing_block_is_reported_with_its_file_and_number(tmp_path: Path) -> None:
    md = tmp_path / "page.md"
    md.write_text(
        "# Page\n\n```python\nx = 1\n```\n\n```sh\nexit 1\n```\n\n"
        "```python no-run\nraise SystemExit\n```\n\n"
        "```python\nimport asyncio\nawait asyncio.sleep(0)\nassert x == 2, 'x is 1'\n```\n"
    )
    blocks = python_blocks(md)
    assert [(b.number, b.line, b.run) for b in blocks] == [
        (1, 4, True),
        (2, 12, False),
        (3, 16, True),
    ]
    with pytest.raises(pytest.fail.Exception) as info:
        run_blocks(md)
    message = str(info.value)
    assert "page.md block 3 (line 16) failed" in message
    assert "x is 1" in message and "line 18" in message
