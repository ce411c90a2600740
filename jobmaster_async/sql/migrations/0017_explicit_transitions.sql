-- Explicit transitions (issue 25): a job's tries are counted as what they are, and a transition
-- function's write is told from a client's plain SQL by a column, not by a setting.
-- Placeholders: {schema} is the quoted schema name.

-- tries: the starts that count against the task's retries since the job was (re)queued: a claim
-- adds one, a release or a rescue that puts the job back gives its start back (- 1), a requeue
-- (retry_job) starts again at 0. A failure is retried while tries <= the task's retries
-- (jobmaster_async/lifecycle.py decides it). It replaces max_attempts, which counted the same
-- thing the other way round (raised by 1 for each start given back, from which the history
-- trigger inferred a release); the public Job.max_attempts is attempts - tries + retries + 1.
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS tries int NOT NULL DEFAULT 0;

-- reason: the reason that the last transition function (claim, complete, fail, release, rescue,
-- cancel, requeue, unblock, the library's inserts) gave for the job's status, in the history row
-- it wrote itself (job_events.reason). A statement that changes a status and leaves this column
-- as it was is a client's plain SQL: the history trigger writes its row (functions/triggers.sql).
-- NULL: the job's status was last written by plain SQL (every job before this migration).
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS reason text;

-- Rows written with max_attempts mean the same with tries: a failure was retried while
-- attempts < max_attempts, that is while attempts - max_attempts + retries + 1 <= retries. Only
-- the rows whose tries are not 0 are written (no status changes: the triggers write no history).
-- Then max_attempts goes. (A schema whose tables are current already has no max_attempts: the
-- migration is run again on it only by a deploy that lost its record, and changes nothing.)
DO $$
BEGIN
    UPDATE {schema}.jobs AS j
       SET tries = j.attempts - j.max_attempts + t.retries + 1
      FROM {schema}.tasks AS t
     WHERE t.task_id = j.task_id AND j.attempts - j.max_attempts + t.retries + 1 <> 0;
    ALTER TABLE {schema}.jobs DROP COLUMN max_attempts;
EXCEPTION WHEN undefined_column THEN
    NULL;
END $$;

-- claim_jobs() returns tries where it returned max_attempts: a function's result columns cannot
-- be replaced, so it is dropped here and created again by the functions (sql/functions/claim.sql).
DROP FUNCTION IF EXISTS {schema}.claim_jobs(uuid, int[], int, int);

-- _arguments_ok(parameters, arguments) becomes _arguments_ok(task, arguments, allow_all), the one
-- decision of the slow paths (sql/functions/validation.sql): the old signature would stay as
-- another function.
DROP FUNCTION IF EXISTS {schema}._arguments_ok(jsonb, jsonb);
