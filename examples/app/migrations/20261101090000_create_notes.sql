CREATE TABLE notes (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    body TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
-- An explicit id: the same SQL runs on SQLite and PostgreSQL.
INSERT INTO notes (id, title, body) VALUES (1, 'Welcome', 'Deployed by deploy-agent.');
