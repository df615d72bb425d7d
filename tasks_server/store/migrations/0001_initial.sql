-- Owners, tasks and the attempt history. Times are epoch milliseconds (UTC).
CREATE TABLE owner (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_digest BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    tasks_in_queue INTEGER NOT NULL DEFAULT 0,
    tasks_in_queue_limit INTEGER NOT NULL
) STRICT;

CREATE TABLE task (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owner (id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status_code INTEGER NOT NULL DEFAULT 0,
    estimate_end_at INTEGER NOT NULL DEFAULT 0,
    estimate_execution_at INTEGER NOT NULL,
    -- planned time of the current or next attempt (first, retry, or after a resume)
    due_at INTEGER NOT NULL,
    -- same as due_at while the task may be claimed; NULL when paused, in flight or final
    next_at INTEGER,
    in_flight INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_count INTEGER NOT NULL DEFAULT 0,
    response BLOB,
    metadata BLOB,
    spec BLOB NOT NULL
) STRICT;

CREATE INDEX task_next_at ON task (next_at) WHERE next_at IS NOT NULL;
CREATE INDEX task_owner_created ON task (owner_id, created_at);

CREATE TABLE attempt (
    task_id TEXT NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    status_code INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    response BLOB,
    headers TEXT,
    total_ms REAL,
    PRIMARY KEY (task_id, number)
) STRICT, WITHOUT ROWID;

-- tasks_in_queue counts RUNNING + PAUSED tasks; unlike the original every way out of
-- those two states frees the slot.
CREATE TRIGGER task_count_insert AFTER INSERT ON task
WHEN NEW.state IN ('RUNNING', 'PAUSED')
BEGIN
    UPDATE owner SET tasks_in_queue = tasks_in_queue + 1 WHERE id = NEW.owner_id;
END;

CREATE TRIGGER task_count_finish AFTER UPDATE OF state ON task
WHEN OLD.state IN ('RUNNING', 'PAUSED') AND NEW.state NOT IN ('RUNNING', 'PAUSED')
BEGIN
    UPDATE owner SET tasks_in_queue = tasks_in_queue - 1 WHERE id = NEW.owner_id;
END;

CREATE TRIGGER task_count_delete AFTER DELETE ON task
WHEN OLD.state IN ('RUNNING', 'PAUSED')
BEGIN
    UPDATE owner SET tasks_in_queue = tasks_in_queue - 1 WHERE id = OLD.owner_id;
END;
