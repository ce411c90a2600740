-- Every history row says why the status changed (DESIGN 9.1 "Counting starts"): inserted,
-- claimed, completed, failed, retried, rescued, released, cancelled, unblocked, requeued.
-- Rows written before this migration keep NULL. Placeholders: {schema} is the quoted schema name.
ALTER TABLE {schema}.job_events ADD COLUMN IF NOT EXISTS reason text;
