-- Owner administration and the cipher key check.

-- a disabled owner's key stops working; its tasks stay as they are
ALTER TABLE owner ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT false;
-- API requests per minute the owner may make (NULL: the server's default)
ALTER TABLE owner ADD COLUMN request_budget INTEGER;

-- one row: a known text sealed with the cipher key, so a wrong key is noticed at start-up
CREATE TABLE seal_check (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value BYTEA NOT NULL
);

-- columns the SQLite store has, so migrate-data finds a place for every value: the
-- sealed attempt detail (written by the SQLite store) and the pruned-attempt count
ALTER TABLE attempt ADD COLUMN detail BYTEA;
ALTER TABLE task ADD COLUMN attempts_pruned INTEGER NOT NULL DEFAULT 0;
