-- Lookups the store makes by environment or by age that were full scans: an environment's
-- rollbacks (newest first), the pending approvals, and pruning old webhook deliveries.
CREATE INDEX IF NOT EXISTS rollbacks_env ON rollbacks (environment, started_at);
CREATE INDEX IF NOT EXISTS approvals_pending ON approvals (decision, requested_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_age ON webhook_deliveries (received_at);
