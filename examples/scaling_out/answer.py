"""Answer a waiting run from any process: ``python -m examples.scaling_out.answer RUN_ID yes``.

The answer lands in the run's inbox; a worker wakes the parked run and finishes it. Then
this process follows the run to its result.
"""

from __future__ import annotations

import asyncio
import sys

from examples.scaling_out.flows import Approval, Expenses


async def main(run_id: str, yes: bool) -> None:
    w = Expenses()
    await w.send_event(run_id, Approval(approved=yes, by="finance"))
    print(await w.result(run_id, timeout=60))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] == "yes"))
