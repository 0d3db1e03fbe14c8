-- piton SQLite schema, version 1.
--
-- Applied by SqliteStore inside one IMMEDIATE transaction together with
-- `PRAGMA user_version = 1`. Never edit a released migration: add 002_....sql instead.

-- One row per run: the RunRecord columns.
CREATE TABLE runs (
    run_id      TEXT PRIMARY KEY,
    workflow    TEXT NOT NULL,
    status      TEXT NOT NULL,
    fingerprint TEXT NOT NULL DEFAULT '{}',
    owner       TEXT,
    epoch       INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    seq         INTEGER NOT NULL DEFAULT 0,
    wake_at     REAL,
    inbox       INTEGER NOT NULL DEFAULT 0,
    result      TEXT,
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    finished_at REAL,
    "start"     TEXT
);

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
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    entry  TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

-- At most one snapshot per run; it covers the journal up to and including seq.
CREATE TABLE snapshots (
    run_id   TEXT PRIMARY KEY,
    seq      INTEGER NOT NULL,
    snapshot TEXT NOT NULL
) WITHOUT ROWID;

-- Everything the run published, in order, for replaying handler.stream_events().
CREATE TABLE stream (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    event  TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

-- Events sent to a run from outside, until a commit consumes them.
CREATE TABLE inbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL,
    event      TEXT NOT NULL,
    step       TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX inbox_by_run ON inbox (run_id, id);
