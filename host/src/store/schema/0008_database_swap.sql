-- A rollback that restores beside the live database and then switches to it records the
-- databases' names and how far the switch got (JSON: live, staged, aside, phase), so that
-- `recover` can finish or undo it after a crash at any point.
ALTER TABLE rollbacks ADD COLUMN database_swap TEXT;
