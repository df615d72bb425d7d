-- Owner administration, the cipher key check, and sealed, bounded attempt history.

-- a disabled owner's key stops working; its tasks stay as they are
ALTER TABLE owner ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
-- API requests per minute the owner may make (NULL: the server's default)
ALTER TABLE owner ADD COLUMN request_budget INTEGER;

-- one row: a known text sealed with the cipher key, so a wrong key is noticed at start-up
-- rather than on the first sealed row the engine reads
CREATE TABLE seal_check (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value BLOB NOT NULL
) STRICT;

-- an attempt's error and response headers, sealed together as one JSON value; rows written
-- before this version keep them in the clear columns error and headers until the key is
-- rotated (tasks-server rotate-key seals them)
ALTER TABLE attempt ADD COLUMN detail BLOB;

-- attempts removed from the middle of a long history (the first and the last ones are kept)
ALTER TABLE task ADD COLUMN attempts_pruned INTEGER NOT NULL DEFAULT 0;
