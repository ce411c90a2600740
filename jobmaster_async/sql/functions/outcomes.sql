-- Recording outcomes (the hot path): completions, failures and releases, all fenced.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


-- Records successes. Fenced: only jobs still running for this worker and attempt are touched,
-- so the late result of a rescued job is dropped. A suspect that completes is no longer one
-- (workers.sql rescue_jobs). Writes the history (the contract: triggers.sql). Returns the ids
-- recorded.
CREATE OR REPLACE FUNCTION {schema}.complete_jobs(
    p_worker uuid, p_ids uuid[], p_attempts int[], p_results jsonb[])
RETURNS uuid[] LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_done  uuid[];
    v_freed boolean;
BEGIN
    WITH
    -- the batch's jobs this worker still holds (fencing: the fragment), completed
    changed AS (
        UPDATE {schema}.jobs AS j
           SET status = 'complete', result = p_results[array_position(p_ids, j.job_id)],
               finished_at = now(), suspect_of = NULL, reason = 'completed'
         WHERE {fragment:held}
        RETURNING j.job_id, j.task_id, j.status, j.reason, j.worker_id, j.message
    ),
    -- the history: a 'complete' event per job
    logged AS (
        {fragment:history}
    )
    SELECT coalesce(array_agg(c.job_id), '{}'), coalesce(bool_or(t.process_limit IS NOT NULL), false)
      INTO v_done, v_freed
      FROM changed AS c LEFT JOIN {schema}.tasks AS t ON t.task_id = c.task_id;
    IF v_freed THEN
        PERFORM pg_notify({channel}, 'wake');  -- a process_limit slot freed
    END IF;
    -- a later statement: its snapshot sees every dependent linked before our row locks
    PERFORM {schema}._settle(v_done);
    RETURN v_done;
END $$;


-- Records failures (fenced like complete_jobs). The worker decided each one (lifecycle.py, from
-- its task's definition): a retry delay says the job goes back to waiting after that delay
-- (reason retried; scheduled: out of the claim indexes until then), NULL that it fails for good
-- (reason failed) and fails its dependents. Writes the history; wakes the workers when a job
-- waits again or a process_limit slot freed.
CREATE OR REPLACE FUNCTION {schema}.fail_jobs(
    p_worker uuid, p_ids uuid[], p_attempts int[], p_error_types text[], p_messages text[],
    p_tracebacks text[], p_retry_delays double precision[])
RETURNS uuid[] LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_final uuid[];
    v_all   uuid[];
    v_wake  boolean;
BEGIN
    WITH
    -- the batch's jobs this worker still holds (fencing), positioned
    batch AS (
        SELECT j.job_id, array_position(p_ids, j.job_id) AS i,
               p_retry_delays[array_position(p_ids, j.job_id)] IS NOT NULL AS retry
          FROM {schema}.jobs AS j
         WHERE {fragment:held}
    ),
    -- each of them back to waiting after its retry delay, or failed for good
    changed AS (
        UPDATE {schema}.jobs AS j
           SET status = CASE WHEN b.retry THEN 'waiting' ELSE 'failed' END,
               reason = CASE WHEN b.retry THEN 'retried' ELSE 'failed' END,
               run_after = now() + coalesce(p_retry_delays[b.i], 0) * interval '1 second',
               scheduled = b.retry AND coalesce(p_retry_delays[b.i], 0) > 0,
               finished_at = CASE WHEN b.retry THEN NULL ELSE now() END,
               worker_id = CASE WHEN b.retry THEN NULL ELSE j.worker_id END,
               error_type = p_error_types[b.i], message = p_messages[b.i],
               traceback = p_tracebacks[b.i],
               -- an attempt that ended without a loss: no longer a suspect (DESIGN 9 "Lost workers")
               suspect_of = NULL
          FROM batch AS b
         WHERE j.job_id = b.job_id
        RETURNING j.job_id, j.task_id, j.status, j.reason, p_worker AS worker_id, j.message
    ),
    -- the history: a 'waiting' (retried) or 'failed' event per job
    logged AS (
        {fragment:history}
    )
    SELECT coalesce(array_agg(c.job_id) FILTER (WHERE c.status = 'failed'), '{}'),
           coalesce(array_agg(c.job_id), '{}'),
           coalesce(bool_or(c.status = 'waiting' OR t.process_limit IS NOT NULL), false)
      INTO v_final, v_all, v_wake
      FROM changed AS c LEFT JOIN {schema}.tasks AS t ON t.task_id = c.task_id;
    IF v_wake THEN
        PERFORM pg_notify({channel}, 'wake');
    END IF;
    PERFORM {schema}._settle(v_final);
    RETURN v_all;
END $$;


-- Puts running jobs of a worker back to waiting (graceful shutdown). The start stays counted in
-- attempts (it never decreases: fencing) and is given back in tries, so a release uses up no
-- retry. A suspect stays one: it did not finish. Writes the history (reason released) and wakes
-- the workers.
CREATE OR REPLACE FUNCTION {schema}.release_jobs(p_worker uuid, p_ids uuid[], p_attempts int[])
RETURNS int LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_count int;
BEGIN
    WITH
    -- the batch's jobs this worker still holds (fencing), waiting again
    changed AS (
        UPDATE {schema}.jobs AS j
           SET status = 'waiting', worker_id = NULL, tries = j.tries - 1, started_at = NULL,
               run_after = now(), message = 'released by a worker shutting down', reason = 'released'
         WHERE {fragment:held}
        RETURNING j.job_id, j.status, j.reason, p_worker AS worker_id, j.message
    ),
    -- the history: a 'waiting' event per job
    logged AS (
        {fragment:history}
    )
    SELECT count(*)::int INTO v_count FROM changed;
    IF v_count > 0 THEN
        PERFORM pg_notify({channel}, 'wake');
    END IF;
    RETURN v_count;
END $$;
