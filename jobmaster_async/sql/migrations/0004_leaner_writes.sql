-- Fewer writes per job. Placeholders: {schema} is the quoted schema name.

-- jobs.task_id referenced tasks with a foreign key, whose check is a row-level trigger: one
-- lookup and row lock per inserted job, a large share of a bulk insert (benchmarks/README.md). Jobs
-- are only inserted by this schema's functions, which look their task up first; deleting tasks
-- (deploy(prune=True), queries.sql prune_tasks) deletes their finished jobs itself.
ALTER TABLE {schema}.jobs DROP CONSTRAINT IF EXISTS jobs_task_id_fkey;

-- Every status change writes a job_events row (three per job at least). Nothing looks events up
-- by event_id alone: job_events_job_idx (job_id, event_id) serves the history, so the primary key
-- index was one more index insert per event for nothing.
ALTER TABLE {schema}.job_events DROP CONSTRAINT IF EXISTS job_events_pkey;
