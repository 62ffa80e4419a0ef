-- The state store as the first release wrote it, without a version. Every statement is
-- IF NOT EXISTS, so a store written before versioning is adopted as it is.
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    version TEXT NOT NULL,
    artifact TEXT,
    digest TEXT,
    actor TEXT NOT NULL,
    reason TEXT,
    host TEXT NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    error TEXT,
    backup_id TEXT,
    schema_before TEXT,
    schema_after TEXT,
    release_id TEXT,
    previous_release TEXT,
    resumed_from TEXT
);
CREATE INDEX IF NOT EXISTS deployments_env ON deployments (environment, started_at);
CREATE TABLE IF NOT EXISTS steps (
    deployment_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    stage TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    detail TEXT,
    PRIMARY KEY (deployment_id, seq)
);
CREATE TABLE IF NOT EXISTS releases (
    environment TEXT NOT NULL,
    id TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT,
    backup_id TEXT,
    schema_version TEXT,
    url TEXT,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    promoted_at BIGINT,
    PRIMARY KEY (environment, id)
);
CREATE TABLE IF NOT EXISTS backups (
    id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    schema_version TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    environment TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
    deployment_id TEXT NOT NULL,
    gate TEXT NOT NULL,
    environment TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    expires_at BIGINT,
    decision TEXT,
    decided_by TEXT,
    decided_at BIGINT,
    reason TEXT,
    PRIMARY KEY (deployment_id, gate)
);
CREATE TABLE IF NOT EXISTS rollbacks (
    id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    initiator TEXT NOT NULL,
    mode TEXT NOT NULL,
    from_release TEXT,
    to_release TEXT,
    backup_id TEXT,
    safety_backup TEXT,
    actor TEXT NOT NULL,
    reason TEXT,
    status TEXT NOT NULL,
    detail TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    environment TEXT,
    subject TEXT,
    host TEXT NOT NULL,
    why TEXT,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    environment TEXT NOT NULL,
    version TEXT,
    artifact TEXT,
    actor TEXT NOT NULL,
    reason TEXT,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    enqueued_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS queue_pending ON queue (environment, state, seq);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL
);
