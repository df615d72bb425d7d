-- Alert rules (the definition sealed, as specs are), their incidents and the deliveries
-- of their messages. Times are epoch milliseconds (UTC).
CREATE TABLE alert_rule (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owner (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    definition BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (owner_id, name)
);

CREATE TABLE alert_incident (
    rule_id TEXT NOT NULL REFERENCES alert_rule (id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    state BYTEA NOT NULL,
    PRIMARY KEY (rule_id, subject)
);

CREATE TABLE alert_delivery (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL,  -- insertion order, for deliveries of one millisecond
    owner_id TEXT NOT NULL REFERENCES owner (id) ON DELETE CASCADE,
    rule_id TEXT NOT NULL REFERENCES alert_rule (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    subject TEXT NOT NULL,
    error TEXT,
    task_id TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX alert_delivery_owner_created ON alert_delivery (owner_id, created_at);
CREATE INDEX alert_delivery_rule_created ON alert_delivery (rule_id, created_at);
