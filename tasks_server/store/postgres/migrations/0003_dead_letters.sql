-- The dead-letter queue: tasks in ERROR, newest failure first, per owner. A replay starts
-- a new attempt cycle on the same task; cycle numbers tell the cycles apart in the history.
CREATE INDEX task_owner_dead ON task (owner_id, estimate_end_at DESC, id DESC)
WHERE state = 'ERROR';

ALTER TABLE task ADD COLUMN cycle INTEGER NOT NULL DEFAULT 1;
ALTER TABLE attempt ADD COLUMN cycle INTEGER NOT NULL DEFAULT 1;
