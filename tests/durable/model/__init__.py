"""Proof machinery for the durability promises (DESIGN.md section 2).

- ``flows``: the small workflows of tests/durable/test_promises.py, one per reported situation;
- ``promise_child``: the program those tests run as real processes (and SIGKILL);
- ``model_flow``, ``schedule``, ``actor``, ``checker``: the model-based multi-process
  checker of tests/durable/test_model_checker.py and bench/soak.py;
- ``targets``: a fresh store per test (SQLite file, Postgres schema, Redis prefix);
- ``files``: fsynced JSON-lines files, the only channel from a child back to the checker.
"""
