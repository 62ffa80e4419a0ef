-- Environments that span hosts. A run's per-host work (roll the release out on a host, or roll
-- that host back) is a row the coordinating agent writes and the host's own agent claims.
CREATE TABLE IF NOT EXISTS host_steps (
    run_id TEXT NOT NULL,
    host TEXT NOT NULL,
    action TEXT NOT NULL,
    environment TEXT NOT NULL,
    batch BIGINT NOT NULL,
    state TEXT NOT NULL,
    claimed_instance TEXT,
    release_id TEXT,
    previous_release TEXT,
    detail TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (run_id, host, action)
);
CREATE INDEX IF NOT EXISTS host_steps_by_host ON host_steps (host, state);
-- What is live on each host of an environment that spans hosts, as its agent last left it.
CREATE TABLE IF NOT EXISTS host_releases (
    environment TEXT NOT NULL,
    host TEXT NOT NULL,
    release_id TEXT NOT NULL,
    version TEXT NOT NULL,
    run_id TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (environment, host)
);
-- An operator's request to abort a run (who and why): a rollout waiting on a host that is down
-- stops at its next look, and rolls back the hosts it did.
ALTER TABLE deployments ADD COLUMN abort_requested TEXT;
