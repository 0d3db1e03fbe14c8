-- piton SQLite schema, version 3: finding the runs a worker should take, by index.
--
-- Applied by SqliteStore inside one IMMEDIATE transaction together with
-- `PRAGMA user_version = 3`. Never edit a released migration: add 004_....sql instead.
--
-- claim_runnable() and runnable() read each kind of runnable run through its own partial
-- index, which holds only the runs of that kind: 100,000 parked runs that wait for an
-- event cost them nothing.

-- running runs of a workflow (whose lease may have expired): as many as workers run at once
CREATE INDEX runs_running ON runs (workflow) WHERE status = 'running';
-- queued runs of a workflow, oldest first
CREATE INDEX runs_queued ON runs (workflow, created_at) WHERE status = 'queued';
-- parked runs with a deadline, soonest first
CREATE INDEX runs_wake ON runs (workflow, wake_at)
    WHERE status = 'parked' AND wake_at IS NOT NULL;
-- parked runs with an event in their inbox
CREATE INDEX runs_mail ON runs (workflow, created_at) WHERE status = 'parked' AND inbox > 0;
