-- piton PostgreSQL schema, version 2: the waiters of a run.
--
-- Applied by PostgresStore in the migration transaction (advisory lock held, search_path
-- set to the store's schema); the migrator then records (2, '002_waiters.sql').
-- Never edit a released migration: add 003_....sql instead.

-- How many waiters (wait_for_event, ctx.sleep) the run had at its last commit that was not
-- a plain step commit; a parked run's is exact, since its parking commit writes it.
-- A constant default: PostgreSQL adds the column without rewriting the table.
ALTER TABLE runs ADD COLUMN waiters integer NOT NULL DEFAULT 0;

-- A run parked before this column existed was parked by a commit that did not record its
-- waiters. It was parked to wait for something, so count one waiter rather than report it
-- as stuck; its next parking commit writes the real number.
UPDATE runs SET waiters = 1 WHERE status = 'parked';

-- stuck() reads parked runs through runs_active (by workflow) or runs_by_status (all
-- workflows, oldest first). No index on inbox, wake_at or waiters: an index naming them
-- would make every deliver and every commit that changes them a non-HOT update.
