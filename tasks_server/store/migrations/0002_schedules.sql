-- Recurring schedules, and the link from each task to the schedule that created it.
CREATE TABLE schedule (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owner (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    expression TEXT NOT NULL,
    timezone TEXT NOT NULL,
    start_at INTEGER,
    end_at INTEGER,
    max_runs INTEGER,
    misfire_policy TEXT NOT NULL,
    overlap_policy TEXT NOT NULL,
    catch_up_limit INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    -- every slot at or before cursor_at is decided: the durable "last fired slot"
    cursor_at INTEGER NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    last_run_at INTEGER,
    last_task_id TEXT,
    -- when the runner looks at the schedule next; NULL unless ACTIVE
    next_at INTEGER,
    version INTEGER NOT NULL DEFAULT 0,
    -- the task template (sealed), and its metadata sealed apart: copied into each task
    spec BLOB NOT NULL,
    metadata BLOB,
    UNIQUE (owner_id, name)
) STRICT;

CREATE INDEX schedule_next_at ON schedule (next_at) WHERE next_at IS NOT NULL;

ALTER TABLE task ADD COLUMN schedule_id TEXT REFERENCES schedule (id) ON DELETE SET NULL;

CREATE INDEX task_schedule_created ON task (schedule_id, created_at)
WHERE schedule_id IS NOT NULL;
