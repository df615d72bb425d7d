-- Workflow steps count against the owner's tasksInQueueLimit. A step with a task is
-- counted in tasks_in_queue like any task; a step still WAITING in a run that is not
-- final has no task yet and is counted here, so a run's later steps hold their place in
-- the queue from the moment the run is created.
ALTER TABLE owner ADD COLUMN steps_waiting INTEGER NOT NULL DEFAULT 0;

UPDATE owner SET steps_waiting = (
    SELECT count(*) FROM workflow_step s JOIN workflow_run r ON r.id = s.run_id
    WHERE r.owner_id = owner.id AND r.state IN ('PENDING', 'RUNNING') AND s.state = 'WAITING'
);

CREATE TRIGGER workflow_step_count_insert AFTER INSERT ON workflow_step
WHEN NEW.state = 'WAITING'
BEGIN
    UPDATE owner SET steps_waiting = steps_waiting + 1 WHERE id = (
        SELECT owner_id FROM workflow_run
        WHERE id = NEW.run_id AND state IN ('PENDING', 'RUNNING'));
END;

CREATE TRIGGER workflow_step_count_update AFTER UPDATE OF state ON workflow_step
WHEN OLD.state <> NEW.state AND 'WAITING' IN (OLD.state, NEW.state)
BEGIN
    UPDATE owner SET steps_waiting = steps_waiting
        + CASE WHEN NEW.state = 'WAITING' THEN 1 ELSE -1 END
    WHERE id = (
        SELECT owner_id FROM workflow_run
        WHERE id = NEW.run_id AND state IN ('PENDING', 'RUNNING'));
END;

CREATE TRIGGER workflow_step_count_delete AFTER DELETE ON workflow_step
WHEN OLD.state = 'WAITING'
BEGIN
    UPDATE owner SET steps_waiting = steps_waiting - 1 WHERE id = (
        SELECT owner_id FROM workflow_run
        WHERE id = OLD.run_id AND state IN ('PENDING', 'RUNNING'));
END;

-- a run that ends stops counting its waiting steps (they will not start); a retried run
-- counts them again
CREATE TRIGGER workflow_run_count_steps AFTER UPDATE OF state ON workflow_run
WHEN (OLD.state IN ('PENDING', 'RUNNING')) <> (NEW.state IN ('PENDING', 'RUNNING'))
BEGIN
    UPDATE owner SET steps_waiting = steps_waiting
        + CASE WHEN NEW.state IN ('PENDING', 'RUNNING') THEN 1 ELSE -1 END
        * (SELECT count(*) FROM workflow_step WHERE run_id = NEW.id AND state = 'WAITING')
    WHERE id = NEW.owner_id;
END;
