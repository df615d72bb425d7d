-- A response body over MAX_SIZE_DATA_RESPONSE is kept up to the cap and flagged.
ALTER TABLE task ADD COLUMN response_truncated BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE attempt ADD COLUMN truncated BOOLEAN NOT NULL DEFAULT false;
