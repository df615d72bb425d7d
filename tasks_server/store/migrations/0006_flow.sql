-- Delivery semantics: retry durations, priority, deduplication and flow-control keys.
ALTER TABLE task ADD COLUMN first_attempt_at INTEGER;
-- -100..100; among tasks due at the same time the higher starts first
ALTER TABLE task ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- the registration's deduplication id, live until dedup_until (then cleared on reuse)
ALTER TABLE task ADD COLUMN dedup_key TEXT;
ALTER TABLE task ADD COLUMN dedup_until INTEGER;
-- the owner's flow-control key this task counts against
ALTER TABLE task ADD COLUMN flow_key TEXT;

CREATE UNIQUE INDEX task_owner_dedup ON task (owner_id, dedup_key) WHERE dedup_key IS NOT NULL;

DROP INDEX task_next_at;
CREATE INDEX task_next_at ON task (next_at, priority DESC) WHERE next_at IS NOT NULL;
CREATE INDEX task_owner_flow ON task (owner_id, flow_key) WHERE flow_key IS NOT NULL;

-- An owner's flow-control keys: the last registration (or an edit) sets the limits.
CREATE TABLE flow_control (
    owner_id TEXT NOT NULL REFERENCES owner (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    rate INTEGER,
    period_ms INTEGER NOT NULL,
    parallelism INTEGER,
    paused INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner_id, key)
) STRICT, WITHOUT ROWID;
