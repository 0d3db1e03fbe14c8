"""The pure core: step graph, run state and the reducer. No asyncio, no I/O, no clock."""
