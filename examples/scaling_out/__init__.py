"""Scaling out: workers on one store, a submitter, and a process that answers (docs/scaling-out.md)."""
