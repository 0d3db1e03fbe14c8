-- piton PostgreSQL schema, version 1.
--
-- Applied by PostgresStore in one transaction that holds a transaction-scoped advisory
-- lock, with search_path set to the store's schema (default `piton`), so the names below
-- are created there. The migrator then inserts (1, '001_initial.sql') into piton_schema.
-- Never edit a released migration: add 002_....sql instead.
--
-- The tables and columns are those of the SQLite schema. Times are seconds since the
-- epoch as double precision, the floats of RunRecord.

-- One row per migration applied; the highest version is the schema's version.
CREATE TABLE piton_schema (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per run: the RunRecord columns. Most commits change only seq and updated_at,
-- which no index covers: free space on each page lets them be HOT updates.
CREATE TABLE runs (
    run_id      text PRIMARY KEY,
    workflow    text NOT NULL,
    status      text NOT NULL,
    fingerprint text NOT NULL DEFAULT '{}',
    owner       text,
    epoch       bigint NOT NULL DEFAULT 0,
    lease_until double precision,
    seq         bigint NOT NULL DEFAULT 0,
    wake_at     double precision,
    inbox       integer NOT NULL DEFAULT 0,
    result      text,
    error       text,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    finished_at double precision,
    "start"     text
) WITH (fillfactor = 80);

-- runnable(): only unfinished runs, by workflow.
CREATE INDEX runs_active ON runs (workflow, status)
    WHERE status IN ('queued', 'running', 'parked');
-- list_runs(): newest first, optionally by status or workflow.
CREATE INDEX runs_by_created ON runs (created_at);
CREATE INDEX runs_by_status ON runs (status, created_at);
CREATE INDEX runs_by_workflow ON runs (workflow, created_at);
-- prune(): finished runs by age.
CREATE INDEX runs_by_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;

-- The journal tail after the snapshot: entries are opaque text to the store.
CREATE TABLE journal (
    run_id text NOT NULL,
    seq    bigint NOT NULL,
    entry  text NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- At most one snapshot per run; it covers the journal up to and including seq.
CREATE TABLE snapshots (
    run_id   text PRIMARY KEY,
    seq      bigint NOT NULL,
    snapshot text NOT NULL
);

-- Everything the run published, in order, for replaying handler.stream_events().
CREATE TABLE stream (
    run_id text NOT NULL,
    seq    bigint NOT NULL,
    event  text NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Events sent to a run from outside, until a commit consumes them.
CREATE TABLE inbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     text NOT NULL,
    event      text NOT NULL,
    step       text,
    created_at double precision NOT NULL
);
CREATE INDEX inbox_by_run ON inbox (run_id, id);
