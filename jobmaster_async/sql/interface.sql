-- The SQL interface of schema {schema} (printed by `jobmaster-async sql`).

-- Insert a job; hands back its id (INOUT job_id). An identical active job is not duplicated.
CALL {schema}.insert_job('type_key', 'task_key', 10, '{"arg": "value"}'::json);

-- The same as a function, for SELECT and for trigger functions (a jsonb value needs ::json).
SELECT {schema}.add_job('type_key', 'task_key', 10, '{"arg": "value"}');

-- Scheduled: never before run_at (after the INOUT job_id in CALL: name it). run_at must be from
-- 1970-01-01 to 9999-12-31 UTC (that day excluded); anything else (infinity too) is refused (JM400).
CALL {schema}.insert_job('type_key', 'task_key', 10, '{"arg": "value"}'::json, run_at => now() + interval '1 hour');
SELECT {schema}.add_job('type_key', 'task_key', 10, '{"arg": "value"}', now() + interval '1 hour');

-- Traces: the W3C trace context the jobs a transaction inserts are stored with (their runs are
-- spans in that trace); a malformed one is not stored.
BEGIN;
SELECT set_config('jobmaster.traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', true);
SELECT {schema}.add_job('type_key', 'task_key', 10, '{"arg": "value"}');
COMMIT;

-- What is going on.
SELECT * FROM {schema}.job_list LIMIT 20;

-- Retention without a worker (pg_cron): one batch of finished jobs past their task's retention.
SELECT {schema}.prune_jobs(NULL);

-- A web app role that may insert jobs and do nothing else.
GRANT USAGE ON SCHEMA {schema} TO webapp;
GRANT EXECUTE ON PROCEDURE {schema}.insert_job(text, text, int, json, uuid, timestamptz) TO webapp;
GRANT EXECUTE ON FUNCTION {schema}.add_job(text, text, int, json, timestamptz) TO webapp;
