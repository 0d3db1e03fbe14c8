-- piton PostgreSQL schema, version 3: finding the runs a worker should take, by index.
--
-- Applied by PostgresStore in the migration transaction (advisory lock held, search_path
-- set to the store's schema); the migrator then records (3, '003_claims.sql').
-- Never edit a released migration: add 004_....sql instead.
--
-- claim_runnable() and runnable() read each kind of runnable run through an index that
-- holds only the runs of that kind, so 100,000 parked runs waiting for an event cost a
-- claim, a wake-up and a finish nothing (see _postgres_ops._KINDS):
--   running runs (lease expired, no owner, dead owner): runs_active (workflow, status);
--     there are only as many as workers run at once;
--   queued runs, oldest first: runs_queued;
--   parked runs whose deadline passed: runs_wake;
--   parked runs with an event in their inbox: runs_mail.
-- No index names lease_until: renew() changes only that column (and updated_at) of
-- every run a worker holds, every few seconds, and stays a HOT update, as step commits
-- do. runs_mail names inbox: a delivery, and a commit that takes inbox events, write
-- index entries; the inbox table itself cannot serve, as the events of finished runs stay
-- in it until they are pruned.

CREATE INDEX runs_queued ON runs (workflow, created_at) WHERE status = 'queued';
CREATE INDEX runs_wake ON runs (workflow, wake_at)
    WHERE status = 'parked' AND wake_at IS NOT NULL;
CREATE INDEX runs_mail ON runs (workflow, created_at) WHERE status = 'parked' AND inbox > 0;
