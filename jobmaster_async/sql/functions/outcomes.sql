-- Recording outcomes (the hot path): completions, failures and releases, all fenced.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


-- Records successes. Fenced: only jobs still running for this worker and attempt are touched,
-- so the late result of a rescued job is dropped. A suspect that completes is no longer one
-- (workers.sql rescue_jobs). Returns the ids recorded.
CREATE OR REPLACE FUNCTION {schema}.complete_jobs(
    p_worker uuid, p_ids uuid[], p_attempts int[], p_results jsonb[])
RETURNS uuid[] LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_done  uuid[];
    v_freed boolean;
BEGIN
    -- This statement writes its own history rows, and the jobs_updated trigger skips it (the
    -- contract: triggers.sql): the trigger's work on claims and completions is much of a drain's.
    PERFORM {fragment:own_history};
    WITH
    -- the batch's jobs this worker still holds (fencing: the fragment), completed
    done AS (
        UPDATE {schema}.jobs AS j
           SET status = 'complete', result = p_results[array_position(p_ids, j.job_id)],
               finished_at = now(), suspect_of = NULL
         WHERE {fragment:held}
        RETURNING j.job_id, j.task_id, j.message
    ),
    -- the history: a 'complete' event per job
    logged AS (
        INSERT INTO {schema}.job_events (job_id, status, reason, worker_id, node, pid, message)
        SELECT d.job_id, 'complete', 'completed', p_worker, w.node, w.pid, d.message
          FROM done AS d, {schema}._event_origin(p_worker) AS w
    )
    SELECT coalesce(array_agg(d.job_id), '{}'), coalesce(bool_or(t.process_limit IS NOT NULL), false)
      INTO v_done, v_freed
      FROM done AS d LEFT JOIN {schema}.tasks AS t ON t.task_id = d.task_id;
    PERFORM {fragment:history_by_triggers};
    IF v_freed THEN
        PERFORM pg_notify({channel}, 'wake');  -- a process_limit slot freed
    END IF;
    -- a later statement: its snapshot sees every dependent linked before our row locks
    PERFORM {schema}._settle(v_done);
    RETURN v_done;
END $$;


-- Records failures (fenced like complete_jobs). A job with attempts left and a retry delay goes
-- back to waiting after that delay (scheduled: out of the claim indexes until then); otherwise it
-- fails for good and fails its dependents.
CREATE OR REPLACE FUNCTION {schema}.fail_jobs(
    p_worker uuid, p_ids uuid[], p_attempts int[], p_error_types text[], p_messages text[],
    p_tracebacks text[], p_retry_delays double precision[])
RETURNS uuid[] LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_final uuid[];
    v_all   uuid[];
BEGIN
    PERFORM {fragment:history_by_triggers};
    WITH
    -- the batch's jobs this worker still holds (fencing), positioned
    batch AS (
        SELECT j.job_id, array_position(p_ids, j.job_id) AS i,
               j.attempts < j.max_attempts
                   AND p_retry_delays[array_position(p_ids, j.job_id)] IS NOT NULL AS retry
          FROM {schema}.jobs AS j
         WHERE {fragment:held}
    ),
    -- each of them back to waiting after its retry delay, or failed for good
    failed AS (
        UPDATE {schema}.jobs AS j
           SET status = CASE WHEN b.retry THEN 'waiting' ELSE 'failed' END,
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
        RETURNING j.job_id, j.status
    )
    SELECT coalesce(array_agg(f.job_id) FILTER (WHERE f.status = 'failed'), '{}'),
           coalesce(array_agg(f.job_id), '{}')
      INTO v_final, v_all FROM failed AS f;
    PERFORM {schema}._settle(v_final);
    RETURN v_all;
END $$;


-- Puts running jobs of a worker back to waiting (graceful shutdown). The start stays counted in
-- attempts (it never decreases: fencing) and is given back through max_attempts, so a release
-- uses up no retry. A suspect stays one: it did not finish.
CREATE OR REPLACE FUNCTION {schema}.release_jobs(p_worker uuid, p_ids uuid[], p_attempts int[])
RETURNS int LANGUAGE sql {entry_point} AS $$
    SELECT {fragment:history_by_triggers};
    WITH
    -- the batch's jobs this worker still holds (fencing), waiting again
    released AS (
        UPDATE {schema}.jobs AS j
           SET status = 'waiting', worker_id = NULL, max_attempts = j.max_attempts + 1, started_at = NULL,
               run_after = now(), message = 'released by a worker shutting down'
         WHERE {fragment:held}
        RETURNING 1
    )
    SELECT count(*)::int FROM released;
$$;
