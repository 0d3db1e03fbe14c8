"""``piton serve`` without the server extra, and ``import piton`` without Starlette."""

from __future__ import annotations

import subprocess
import sys

BLOCK = "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None; "


def test_serve_without_the_extra_exits_2_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCK + "from piton.cli import main; main()", "serve", "m:W"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'piton[server]'" in done.stderr


def test_import_piton_and_its_cli_needs_no_starlette() -> None:
    code = BLOCK + "import piton, piton.cli; assert 'piton.server' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
