-- Workflow runs: a graph of steps, each run as an ordinary task, as in the SQLite
-- schema. Times are epoch milliseconds (UTC).
CREATE TABLE workflow_run (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owner (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    finished_at BIGINT,
    -- the run fails when it is not final by then (config.timeoutMs); NULL: no limit
    deadline_at BIGINT,
    -- steps neither SUCCESS nor SKIPPED: the run succeeds when this reaches 0
    remaining INTEGER NOT NULL,
    error TEXT,
    input BYTEA NOT NULL,
    metadata BYTEA,
    -- onSuccess / onFailure: the calls made with the run's envelope when it ends
    callbacks BYTEA
);

CREATE INDEX workflow_run_owner ON workflow_run (owner_id, created_at);
CREATE INDEX workflow_run_deadline ON workflow_run (deadline_at)
    WHERE deadline_at IS NOT NULL AND finished_at IS NULL;

CREATE TABLE workflow_step (
    run_id TEXT NOT NULL REFERENCES workflow_run (id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    -- dependencies that have not succeeded (or been skipped) yet: 0 means ready
    unmet INTEGER NOT NULL,
    -- 1 once a dependency was skipped: the step is skipped too unless it opts in
    dep_skipped INTEGER NOT NULL DEFAULT 0,
    depends_on TEXT NOT NULL,
    template BYTEA NOT NULL,
    task_id TEXT,
    result BYTEA,
    error TEXT,
    started_at BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (run_id, step_id)
);

CREATE INDEX workflow_step_task ON workflow_step (task_id) WHERE task_id IS NOT NULL;

-- who waits for whom: finishing a step reads its dependants here, never the whole run
CREATE TABLE workflow_edge (
    run_id TEXT NOT NULL REFERENCES workflow_run (id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    dependant TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, dependant)
);
