-- Scheduled jobs (backups, prune, restore drills, off-site checks, state backups). One row
-- per occurrence: inserting it is the claim, so in a fleet sharing this store exactly one
-- agent runs each occurrence (the primary key refuses the others). `environment` is '' for
-- the agent's own jobs (state_backup).
CREATE TABLE IF NOT EXISTS scheduled_jobs (
    id TEXT NOT NULL UNIQUE,
    environment TEXT NOT NULL,
    job TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    agent TEXT NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    claimed_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT,
    next_attempt_at BIGINT,
    detail TEXT,
    PRIMARY KEY (environment, job, due_at)
);

-- When each job was first seen scheduled: occurrences before it are not run (a new schedule
-- does not fire for the past), those after it missed while no agent ran run once, as the
-- latest.
CREATE TABLE IF NOT EXISTS schedule_cursors (
    environment TEXT NOT NULL,
    job TEXT NOT NULL,
    armed_at BIGINT NOT NULL,
    PRIMARY KEY (environment, job)
);
