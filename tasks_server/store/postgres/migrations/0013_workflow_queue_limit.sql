-- Workflow steps count against the owner's tasksInQueueLimit. A step with a task is
-- counted with the owner's tasks; a step still WAITING in a run that is not final has no
-- task yet and is counted too, so a run's later steps hold their place in the queue from
-- the moment the run is created. They are counted when an owner with a limit creates
-- something (as its tasks are), on these indexes: no counter row that every step of the
-- owner would have to lock.
CREATE INDEX workflow_run_owner_active ON workflow_run (owner_id)
    WHERE state IN ('PENDING', 'RUNNING');
CREATE INDEX workflow_step_waiting ON workflow_step (run_id) WHERE state = 'WAITING';
