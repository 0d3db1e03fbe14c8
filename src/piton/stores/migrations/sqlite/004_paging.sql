-- piton SQLite schema, version 4: listing runs a page at a time.
--
-- Applied by SqliteStore inside one IMMEDIATE transaction together with
-- `PRAGMA user_version = 4`. Never edit a released migration: add 005_....sql instead.
--
-- list_runs() reads runs newest first, ordered by (created_at, run_id), and continues after
-- a cursor with `(created_at, run_id) < (?, ?)`: a keyset read, as fast on the thousandth
-- page as on the first. Each index below serves one filter (none, status, workflow) in
-- that order, so a page reads only its own rows; with both, one of them serves and the
-- other is checked row by row (an index on both would draw the planner away from the
-- partial indexes of migration 003, which claims read). They replace the indexes of
-- version 1 that ended at created_at (ties in created_at would have to be sorted).

DROP INDEX IF EXISTS runs_by_created;
DROP INDEX IF EXISTS runs_by_status;
DROP INDEX IF EXISTS runs_by_workflow;
CREATE INDEX runs_page ON runs (created_at, run_id);
CREATE INDEX runs_page_status ON runs (status, created_at, run_id);
CREATE INDEX runs_page_workflow ON runs (workflow, created_at, run_id);
