-- Workers: heartbeats and the rescue of the jobs of lost workers.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


CREATE OR REPLACE FUNCTION {schema}.heartbeat(
    p_worker uuid, p_node text, p_pid int, p_lapse double precision)
RETURNS void LANGUAGE sql {entry_point} AS $$
    INSERT INTO {schema}.workers AS w (worker_id, node, pid, lapse)
    VALUES (p_worker, p_node, p_pid, p_lapse * interval '1 second')
    ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now(), lapse = excluded.lapse;
$$;


-- Jobs of workers whose heartbeat lapsed (or that are gone) go back to waiting, or fail when
-- their attempts are used up. Dead worker rows are locked SKIP LOCKED: one rescuer each. Every
-- worker calls this on each poll: bitmap scans are off for the reason the claim's are (fragment
-- claim_settings), and jit with them (before PostgreSQL 18 a disabled plan node is given a huge
-- cost, which would make JIT compile the statement on every call).
CREATE OR REPLACE FUNCTION {schema}.rescue_jobs()
RETURNS int LANGUAGE plpgsql {entry_point} SET enable_bitmapscan = off SET jit = off AS $$
DECLARE
    v_dead  uuid[];
    v_count int;
    v_final uuid[];
BEGIN
    PERFORM {fragment:history_by_triggers};
    SELECT coalesce(array_agg(w.worker_id), '{}') INTO v_dead
      FROM (SELECT w.worker_id FROM {schema}.workers AS w
             WHERE w.heartbeat_at < now() - w.lapse
               FOR UPDATE SKIP LOCKED) AS w;
    WITH
    -- running jobs of dead or unknown workers
    lost AS (
        SELECT j.job_id FROM {schema}.jobs AS j
         WHERE j.status = 'running'
           AND (j.worker_id = ANY (v_dead)
                OR NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.worker_id = j.worker_id))
           FOR NO KEY UPDATE OF j SKIP LOCKED
    ),
    -- put back without using up retries (the lost start gets an attempt of its own), up to the
    -- task's rescues; the next loss fails the job (a poison job stops there)
    rescued AS (
        UPDATE {schema}.jobs AS j
           SET status = CASE WHEN j.rescues < t.rescues THEN 'waiting' ELSE 'failed' END,
               finished_at = CASE WHEN j.rescues < t.rescues THEN NULL ELSE now() END,
               max_attempts = j.max_attempts + CASE WHEN j.rescues < t.rescues THEN 1 ELSE 0 END,
               rescues = j.rescues + 1,
               run_after = now(),
               message = CASE WHEN j.rescues < t.rescues
                              THEN format('worker %s lost (heartbeat lapsed) during attempt %s; put back (rescue %s of %s)',
                                          j.worker_id, j.attempts, j.rescues + 1, t.rescues)
                              ELSE format('worker %s lost (heartbeat lapsed) during attempt %s; failed: its worker was lost %s times (rescues=%s)',
                                          j.worker_id, j.attempts, j.rescues + 1, t.rescues) END
          FROM lost AS l, {schema}.tasks AS t
         WHERE j.job_id = l.job_id AND t.task_id = j.task_id
        RETURNING j.job_id, j.status
    )
    SELECT count(*)::int, coalesce(array_agg(r.job_id) FILTER (WHERE r.status = 'failed'), '{}')
      INTO v_count, v_final FROM rescued AS r;
    UPDATE {schema}.jobs SET abandoned = false WHERE abandoned AND worker_id = ANY (v_dead);
    DELETE FROM {schema}.workers WHERE worker_id = ANY (v_dead);
    PERFORM {schema}._settle(v_final);
    RETURN v_count;
END $$;
