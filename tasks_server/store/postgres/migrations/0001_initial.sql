-- Owners, tasks with their attempt history, and recurring schedules, as in the SQLite
-- schema, plus the lease columns that let several nodes share the task table.
-- Times are epoch milliseconds (UTC).
CREATE TABLE owner (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_digest BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    tasks_in_queue_limit INTEGER NOT NULL
);

CREATE TABLE schedule (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owner (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    expression TEXT NOT NULL,
    timezone TEXT NOT NULL,
    start_at BIGINT,
    end_at BIGINT,
    max_runs INTEGER,
    misfire_policy TEXT NOT NULL,
    overlap_policy TEXT NOT NULL,
    catch_up_limit INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- every slot at or before cursor_at is decided: the durable "last fired slot"
    cursor_at BIGINT NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    last_run_at BIGINT,
    last_task_id TEXT,
    -- when the leader looks at the schedule next; NULL unless ACTIVE
    next_at BIGINT,
    version INTEGER NOT NULL DEFAULT 0,
    spec BYTEA NOT NULL,
    metadata BYTEA,
    UNIQUE (owner_id, name)
);

CREATE INDEX schedule_next_at ON schedule (next_at) WHERE next_at IS NOT NULL;

CREATE TABLE task (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owner (id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    status_code INTEGER NOT NULL DEFAULT 0,
    estimate_end_at BIGINT NOT NULL DEFAULT 0,
    estimate_execution_at BIGINT NOT NULL,
    -- planned time of the current or next attempt (first, retry, or after a resume)
    due_at BIGINT NOT NULL,
    -- same as due_at while the task may be claimed; NULL when paused, in flight or final
    next_at BIGINT,
    in_flight BOOLEAN NOT NULL DEFAULT false,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_count INTEGER NOT NULL DEFAULT 0,
    -- the node whose claim this is, and until when the claim holds unless renewed
    lease_owner TEXT,
    lease_until BIGINT,
    response BYTEA,
    metadata BYTEA,
    spec BYTEA NOT NULL,
    schedule_id TEXT REFERENCES schedule (id) ON DELETE SET NULL
);

-- the engine's queue: claims lock rows of this index with FOR UPDATE SKIP LOCKED
CREATE INDEX task_next_at ON task (next_at) WHERE next_at IS NOT NULL;
-- claims whose lease may run out (a dead node's are found here)
CREATE INDEX task_lease_until ON task (lease_until) WHERE in_flight;
CREATE INDEX task_owner_created ON task (owner_id, created_at);
-- an owner's queue (RUNNING + PAUSED) is counted on this index rather than kept in a
-- counter on the owner row: outcome writes of several nodes then never meet on that row
CREATE INDEX task_owner_pending ON task (owner_id) WHERE state IN ('RUNNING', 'PAUSED');
CREATE INDEX task_schedule_created ON task (schedule_id, created_at)
WHERE schedule_id IS NOT NULL;

CREATE TABLE attempt (
    task_id TEXT NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    status_code INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    response BYTEA,
    headers TEXT,
    total_ms DOUBLE PRECISION,
    PRIMARY KEY (task_id, number)
);
