-- Progressive delivery: each canary step of a run, journaled before the weight is set
-- (`setting`), once it took effect and the pause began (`holding`), and when it ended
-- (`done`, or `aborted` when the traffic went back to the stable release). A restarted run
-- resumes at its last row, with the weight that row has.
CREATE TABLE IF NOT EXISTS traffic_steps (
    run_id TEXT NOT NULL,
    step BIGINT NOT NULL,
    release_id TEXT NOT NULL,
    weight BIGINT NOT NULL,
    phase TEXT NOT NULL,
    detail TEXT,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step)
);
