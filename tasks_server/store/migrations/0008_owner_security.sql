-- Per-owner security: signing secrets (sealed) and the validated domains (a JSON list).
CREATE TABLE owner_security (
    owner_id TEXT PRIMARY KEY REFERENCES owner (id) ON DELETE CASCADE,
    signing_secret BLOB NOT NULL,
    previous_secret BLOB,
    previous_until INTEGER,
    signing_enabled INTEGER NOT NULL DEFAULT 1,
    allowed_hosts TEXT
) STRICT;
