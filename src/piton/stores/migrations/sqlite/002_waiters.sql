-- piton SQLite schema, version 2: the waiters of a run, and finding stuck runs.
--
-- Applied by SqliteStore inside one IMMEDIATE transaction together with
-- `PRAGMA user_version = 2`. Never edit a released migration: add 003_....sql instead.

-- How many waiters (wait_for_event, ctx.sleep) the run had at its last commit that was not
-- a plain step commit; a parked run's is exact, since its parking commit writes it.
ALTER TABLE runs ADD COLUMN waiters INTEGER NOT NULL DEFAULT 0;

-- A run parked before this column existed was parked by a commit that did not record its
-- waiters. It was parked to wait for something, so count one waiter rather than report it
-- as stuck; its next parking commit writes the real number.
UPDATE runs SET waiters = 1 WHERE status = 'parked';

-- stuck(): parked runs that no event, deadline or waiter will ever move. Normally empty, so
-- the index costs nearly nothing, and stuck() reads only what it returns.
CREATE INDEX runs_stuck ON runs (workflow, created_at)
    WHERE status = 'parked' AND inbox = 0 AND wake_at IS NULL AND waiters = 0;
