-- A fleet of agents on one state store. Each daemon registers under its host name and
-- heartbeats; one whose heartbeat is older than its lease is dead, and its runs are taken over.
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    version TEXT NOT NULL,
    environments TEXT NOT NULL,
    api TEXT,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    lease_ms BIGINT NOT NULL,
    stopped_at BIGINT
);
-- Who claimed a queued run: the agent's name and its process (`host:pid:start`).
ALTER TABLE queue ADD COLUMN claimed_by TEXT;
ALTER TABLE queue ADD COLUMN claimed_instance TEXT;
ALTER TABLE queue ADD COLUMN claimed_at BIGINT;
-- Which process ran each step: the journal shows who did what when a run changed hands.
ALTER TABLE steps ADD COLUMN owner TEXT;
-- Two agents enqueueing at once cannot take the same place in the order.
CREATE UNIQUE INDEX IF NOT EXISTS queue_seq ON queue (seq);
