-- Per-owner security: signing secrets (sealed) and the validated domains (a JSON list).
CREATE TABLE owner_security (
    owner_id TEXT PRIMARY KEY REFERENCES owner (id) ON DELETE CASCADE,
    signing_secret BYTEA NOT NULL,
    previous_secret BYTEA,
    previous_until BIGINT,
    signing_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    allowed_hosts TEXT
);
