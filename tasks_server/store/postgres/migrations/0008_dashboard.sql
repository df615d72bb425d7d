-- Lists that filter and page through many tasks (the dashboard): the URL's host in the
-- clear (the request stays sealed), and indexes for keyset pages by creation time.
ALTER TABLE task ADD COLUMN host TEXT;
ALTER TABLE schedule ADD COLUMN host TEXT;

DROP INDEX task_owner_created;
CREATE INDEX task_owner_created ON task (owner_id, created_at, id);
CREATE INDEX task_owner_state_created ON task (owner_id, state, created_at, id);
CREATE INDEX task_owner_host_created ON task (owner_id, host, created_at, id)
WHERE host IS NOT NULL;
-- finished tasks by end time: throughput and failure rate over the last day
CREATE INDEX task_owner_finished ON task (owner_id, estimate_end_at, state)
WHERE state IN ('SUCCESS', 'ERROR');
-- pending tasks per host: the busiest hosts
CREATE INDEX task_owner_pending_host ON task (owner_id, host) WHERE state = 'RUNNING';
