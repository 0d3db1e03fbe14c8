"""The asyncio shell that drives the pure reducer: step tasks, timers, streams, commits."""
