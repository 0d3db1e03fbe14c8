"""Queue expenses for the workers: ``python -m examples.scaling_out.submit``.

Run ids are derived from the input, so submitting twice queues nothing twice.
"""

from __future__ import annotations

import asyncio

from examples.scaling_out.flows import Expenses

CLAIMS = [("ada", 120.0), ("grace", 4200.0), ("linus", 35.5), ("barbara", 980.0)]


async def main() -> None:
    w = Expenses()  # the store comes from $PITON_STORE
    for who, amount in CLAIMS:
        run_id = await w.start(run_id=f"expense-{who}", who=who, amount=amount)
        print("queued", run_id)


if __name__ == "__main__":
    asyncio.run(main())
