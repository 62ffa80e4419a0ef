-- What a run's checks and analyses measured, in order: the evidence the console charts next
-- to each analysis' bounds. Values are text (Rust's shortest round-trip form of an f64), so
-- the SQL stays text and 64-bit integers on both backends.
CREATE TABLE IF NOT EXISTS evidence (
    deployment_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    stage TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    outcome TEXT NOT NULL,
    value TEXT,
    min TEXT,
    max TEXT,
    detail TEXT,
    at BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);
