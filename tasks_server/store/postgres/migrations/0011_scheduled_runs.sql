-- Schedules that start workflow runs: what a schedule's slot starts ('task' or
-- 'workflow'; a workflow schedule keeps its sealed definition in `spec`), and the schedule
-- that started each run.
ALTER TABLE schedule ADD COLUMN target TEXT NOT NULL DEFAULT 'task';

ALTER TABLE workflow_run ADD COLUMN schedule_id TEXT REFERENCES schedule (id) ON DELETE SET NULL;

CREATE INDEX workflow_run_schedule ON workflow_run (schedule_id, created_at)
WHERE schedule_id IS NOT NULL;
