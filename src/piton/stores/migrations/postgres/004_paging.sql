-- piton PostgreSQL schema, version 4: listing runs a page at a time.
--
-- Applied by PostgresStore in the migration transaction (advisory lock held, search_path
-- set to the store's schema); the migrator then records (4, '004_paging.sql').
-- Never edit a released migration: add 005_....sql instead.
--
-- list_runs() reads runs newest first, ordered by (created_at, run_id COLLATE "C"): run ids
-- compare by their bytes, whatever the database's collation, as in SQLite and Redis. A page
-- after a cursor is `(created_at, run_id COLLATE "C") < (%s, %s)`: a keyset read, as fast
-- on the thousandth page as on the first. Each index below serves one filter (none,
-- status, workflow) in that order; with both, one of them serves and the other is checked
-- row by row. They replace the indexes of version 1 that ended at created_at. created_at,
-- run_id and workflow never change and status is indexed already, so step commits (seq,
-- updated_at) stay HOT updates.

DROP INDEX IF EXISTS runs_by_created;
DROP INDEX IF EXISTS runs_by_status;
DROP INDEX IF EXISTS runs_by_workflow;
CREATE INDEX runs_page ON runs (created_at, run_id COLLATE "C");
CREATE INDEX runs_page_status ON runs (status, created_at, run_id COLLATE "C");
CREATE INDEX runs_page_workflow ON runs (workflow, created_at, run_id COLLATE "C");
