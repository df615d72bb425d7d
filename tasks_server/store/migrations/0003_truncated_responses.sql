-- A response body over MAX_SIZE_DATA_RESPONSE is kept up to the cap and flagged.
ALTER TABLE task ADD COLUMN response_truncated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempt ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
