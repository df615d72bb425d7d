-- The dead-letter queue: tasks in ERROR, newest failure first, per owner. A replay starts
-- a new attempt cycle on the same task; cycle numbers tell the cycles apart in the history.
CREATE INDEX task_owner_dead ON task (owner_id, estimate_end_at DESC, id DESC)
WHERE state = 'ERROR';

ALTER TABLE task ADD COLUMN cycle INTEGER NOT NULL DEFAULT 1;
ALTER TABLE attempt ADD COLUMN cycle INTEGER NOT NULL DEFAULT 1;

-- a replayed task is counted again, like a new one
CREATE TRIGGER task_count_reopen AFTER UPDATE OF state ON task
WHEN OLD.state NOT IN ('RUNNING', 'PAUSED') AND NEW.state IN ('RUNNING', 'PAUSED')
BEGIN
    UPDATE owner SET tasks_in_queue = tasks_in_queue + 1 WHERE id = NEW.owner_id;
END;
