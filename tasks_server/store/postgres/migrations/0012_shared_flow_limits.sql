-- Flow-control limits shared by every node: a key's token bucket lives in its row (taken
-- under the row's lock in the claim transaction), and its calls in flight are counted
-- on the tasks themselves.

-- the bucket's credit (in 1/period_ms tokens) as of credit_at; NULL: a full burst
ALTER TABLE flow_control ADD COLUMN credit BIGINT;
ALTER TABLE flow_control ADD COLUMN credit_at BIGINT;

CREATE INDEX task_flow_in_flight ON task (owner_id, flow_key)
    WHERE in_flight AND flow_key IS NOT NULL;
