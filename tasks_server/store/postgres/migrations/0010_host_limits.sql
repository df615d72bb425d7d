-- Destination backpressure: an administrator's limits for one destination host
-- ("name:port", or a bare name for every port). NULL keeps the server-wide default.
CREATE TABLE host_limit (
    host TEXT PRIMARY KEY,
    max_concurrency INTEGER,
    max_rate DOUBLE PRECISION,
    updated_at BIGINT NOT NULL
);
