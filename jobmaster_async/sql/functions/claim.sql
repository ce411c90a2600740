-- Claiming jobs (the hot path): claim_jobs(), for claims that must respect process_limit or
-- process_units (the common claim is queries.sql claim_jobs_fast).
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


-- Claims up to p_limit runnable jobs of the given tasks for a worker whose free process units
-- are p_units: highest priority first, then oldest; process_limit exact across all workers.
CREATE OR REPLACE FUNCTION {schema}.claim_jobs(
    p_worker uuid, p_task_ids int[], p_limit int, p_units int)
RETURNS TABLE (job_id uuid, task_id int, priority int, arguments jsonb, attempts int,
               max_attempts int)
-- A queue table's statistics are always stale: without enable_sort = off, a plan that reads every
-- waiting job and sorts them looks cheaper than walking the claim index in order, and is far
-- slower. Before PostgreSQL 18 a disabled sort costs 1e10, which would make JIT compile every
-- claim (~100 ms): hence jit = off. Bitmap scans are off because they never mark the index
-- entries of finished jobs dead: until vacuum, every count of a task's running jobs would visit
-- the table for each finished job of the task (see migration 0006).
LANGUAGE plpgsql {entry_point} SET enable_sort = off SET jit = off SET enable_bitmapscan = off AS $$
DECLARE
    v_limited   int[];
    v_max_units int;
    v_eligible  int[];
    v_caps      int[];
    v_ids       uuid[] := '{}';
    v_taken     jsonb := '{}';
    v_left      int := p_units;
    v_row       record;
BEGIN
    -- A claim need not wait for its WAL flush: lost in a crash, it only puts the job back to
    -- waiting, as a crash does anyway (outcomes are still committed durably).
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT array_agg(t.task_id) FILTER (WHERE t.process_limit IS NOT NULL), max(t.process_units)
      INTO v_limited, v_max_units
      FROM {schema}.tasks AS t WHERE t.task_id = ANY (p_task_ids);

    IF v_limited IS NULL AND v_max_units * p_limit <= p_units THEN
        -- fast path: no limits to respect, the units budget cannot be exceeded
        RETURN QUERY
        WITH
        -- the next runnable jobs, locked; rows other claimers hold are skipped
        next_jobs AS (
            SELECT j.job_id FROM {schema}.jobs AS j
             WHERE j.status = 'waiting' AND j.run_after <= now() AND j.task_id = ANY (p_task_ids)
             ORDER BY j.priority DESC, j.seq
             LIMIT p_limit
             FOR NO KEY UPDATE SKIP LOCKED
        )
        UPDATE {schema}.jobs AS j
           SET status = 'running', worker_id = p_worker, attempts = j.attempts + 1,
               started_at = now(), message = NULL
          FROM next_jobs AS n
         WHERE j.job_id = n.job_id
        RETURNING j.job_id, j.task_id, j.priority, j.arguments, j.attempts, j.max_attempts;
        RETURN;
    END IF;

    -- Limited tasks: lock their rows (those another claimer holds are skipped this round), then
    -- count their running jobs in a later statement, whose snapshot sees every committed claim.
    SELECT coalesce(array_agg(t.task_id), '{}') INTO v_limited
      FROM (SELECT t.task_id FROM {schema}.tasks AS t
             WHERE t.task_id = ANY (v_limited) ORDER BY t.task_id
               FOR NO KEY UPDATE SKIP LOCKED) AS t;
    SELECT array_agg(t.task_id), array_agg(least(p_limit, coalesce(t.process_limit - r.running, t.process_limit, p_limit)))
      INTO v_eligible, v_caps
      FROM {schema}.tasks AS t
      -- running: jobs_running_idx; abandoned (cancelled, thread still running): jobs_abandoned_idx
      LEFT JOIN LATERAL (SELECT (SELECT count(*)::int FROM {schema}.jobs AS j
                                  WHERE j.task_id = t.task_id AND j.status = 'running')
                              + (SELECT count(*)::int FROM {schema}.jobs AS j
                                  WHERE j.task_id = t.task_id AND j.abandoned
                                    AND j.status <> 'running') AS running) AS r ON true
     WHERE t.task_id = ANY (p_task_ids) AND t.process_units <= p_units
       AND (t.process_limit IS NULL OR t.task_id = ANY (v_limited));

    -- candidates: up to each task's cap, locked; then taken greedily within the units budget
    FOR v_row IN
        SELECT c.job_id, c.task_id, c.process_units
          FROM unnest(v_eligible, v_caps) AS e(task_id, cap)
         CROSS JOIN LATERAL (
               SELECT j.job_id, j.task_id, j.priority, j.seq, t.process_units
                 FROM {schema}.jobs AS j JOIN {schema}.tasks AS t ON t.task_id = j.task_id
                WHERE j.task_id = e.task_id AND j.status = 'waiting' AND j.run_after <= now()
                ORDER BY j.priority DESC, j.seq
                LIMIT greatest(e.cap, 0)
                  FOR NO KEY UPDATE OF j SKIP LOCKED) AS c
         ORDER BY c.priority DESC, c.seq
    LOOP
        CONTINUE WHEN v_row.process_units > v_left;
        v_left := v_left - v_row.process_units;
        v_ids := v_ids || v_row.job_id;
        EXIT WHEN cardinality(v_ids) >= p_limit;
    END LOOP;

    RETURN QUERY
    UPDATE {schema}.jobs AS j
       SET status = 'running', worker_id = p_worker, attempts = j.attempts + 1,
           started_at = now(), message = NULL
     WHERE j.job_id = ANY (v_ids)
    RETURNING j.job_id, j.task_id, j.priority, j.arguments, j.attempts, j.max_attempts;
END $$;
