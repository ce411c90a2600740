-- Claiming jobs (the hot path): claim_jobs(), for claims that must respect process_limit or
-- process_units (the common claim is queries.sql claim_jobs_fast); promote_due_jobs(), which
-- makes scheduled jobs that fell due claimable.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


-- Scheduled jobs (waiting for a future run_after when they were written: out of the claim
-- indexes) that fell due become claimable: up to p_max of them, earliest first, found through
-- jobs_scheduled_idx; rows another transaction holds are skipped (another promoter's, or a
-- client's moving a job earlier: a later call takes them). Wakes the workers when it promoted
-- any. Returns how many it promoted. The claim path calls it: claim_jobs() at its start, the
-- claimer (db/claimer.py) when claim_jobs_fast said the earliest scheduled job is due, so that
-- it costs no round trip while none is.
CREATE OR REPLACE FUNCTION {schema}.promote_due_jobs(p_max int DEFAULT 1000)
RETURNS int
-- the planner settings of every claim (why: the fragment)
LANGUAGE plpgsql {entry_point} {claim_settings} AS $$
DECLARE
    v_due uuid[];
BEGIN
    -- lost in a crash, a promotion is made again by the next one
    PERFORM {fragment:claim_commit};
    SELECT array_agg(d.job_id) INTO v_due
      FROM (SELECT j.job_id FROM {schema}.jobs AS j
             WHERE j.status = 'waiting' AND j.scheduled AND j.run_after <= now()
             ORDER BY j.run_after
             LIMIT p_max
               FOR NO KEY UPDATE SKIP LOCKED) AS d;
    IF v_due IS NULL THEN
        RETURN 0;
    END IF;
    -- no status changes (no history), but jobs became claimable: the workers are woken
    UPDATE {schema}.jobs SET scheduled = false WHERE job_id = ANY (v_due);
    PERFORM pg_notify({channel}, 'wake');
    RETURN cardinality(v_due);
END $$;


-- Claims up to p_limit runnable jobs of the given tasks for a worker whose free process units
-- are p_units: highest priority first, then oldest; process_limit exact across all workers.
CREATE OR REPLACE FUNCTION {schema}.claim_jobs(
    p_worker uuid, p_task_ids int[], p_limit int, p_units int)
RETURNS TABLE (job_id uuid, task_id int, priority int, arguments jsonb, attempts int,
               tries int, trace_context jsonb)
-- the planner settings of every claim (why: the fragment)
LANGUAGE plpgsql {entry_point} {claim_settings} AS $$
DECLARE
    v_limited   int[];
    v_eligible  int[];
    v_caps      int[];
    v_ids       uuid[] := '{}';
    v_taken     jsonb := '{}';
    v_left      int := p_units;
    v_row       record;
    -- suspects run one per worker: may this claim take one? (NULL: not asked yet)
    v_suspect   boolean;
BEGIN
    PERFORM {fragment:claim_commit};
    -- scheduled jobs that fell due become claimable first (an index probe when none did)
    PERFORM {schema}.promote_due_jobs();

    IF NOT (SELECT {fragment:limits_apply}
              FROM (SELECT p_task_ids AS task_ids, p_limit AS lim, p_units AS units) AS r) THEN
        -- fast path: no limits to respect, the units budget cannot be exceeded
        RETURN QUERY
        WITH
        -- a suspect, if one is claimable and this worker runs none: suspects run one per worker
        -- (DESIGN 9 "Lost workers"; claim_jobs_fast sends claims here while one is claimable)
        suspect AS (
            SELECT j.job_id, p_worker AS worker_id FROM {schema}.jobs AS j
             WHERE {fragment:claimable} AND j.suspect_of IS NOT NULL AND j.task_id = ANY (p_task_ids)
               AND {fragment:runs_no_suspect}
             ORDER BY j.status, j.priority DESC, j.seq, j.suspect_of
             LIMIT 1
             FOR NO KEY UPDATE SKIP LOCKED
        ),
        -- the next runnable ordinary jobs, locked; rows other claimers hold are skipped
        ordinary AS (
            SELECT j.job_id, p_worker AS worker_id FROM {schema}.jobs AS j
             WHERE {fragment:claimable} AND j.task_id = ANY (p_task_ids) AND j.suspect_of IS NULL
             ORDER BY j.priority DESC, j.seq
             LIMIT p_limit
             FOR NO KEY UPDATE SKIP LOCKED
        ),
        -- what this claim takes: the suspect first, up to the limit (with a suspect, the last
        -- ordinary job locked is left: a limit computed from the suspect's count would be
        -- estimated at a tenth of the table, and the claim's update would then scan the table
        -- instead of probing its key)
        to_claim AS (
            SELECT u.job_id, u.worker_id
              FROM (SELECT s.job_id, s.worker_id, 0 AS rank FROM suspect AS s
                    UNION ALL
                    SELECT o.job_id, o.worker_id, 1 FROM ordinary AS o) AS u
             ORDER BY u.rank
             LIMIT p_limit
        ),
        -- the jobs, running for this worker
        changed AS (
            {fragment:claim}
        ),
        -- the history: a 'running' event per job
        logged AS (
            {fragment:history}
        )
        SELECT c.job_id, c.task_id, c.priority, c.arguments, c.attempts, c.tries, c.trace_context
          FROM changed AS c;
        RETURN;
    END IF;

    SELECT array_agg(t.task_id) FILTER (WHERE t.process_limit IS NOT NULL) INTO v_limited
      FROM {schema}.tasks AS t WHERE t.task_id = ANY (p_task_ids);
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

    -- may this claim take a suspect? Only when one waits for these tasks (a probe of
    -- jobs_suspects_idx, empty while no worker is lost) and this worker runs none: suspects run
    -- one per worker (as in the fast way above). Asked before the candidates are read, so that
    -- suspects this worker may not take do not fill a task's cap and hide its ordinary jobs.
    v_suspect := false;
    IF (SELECT true FROM {schema}.jobs AS j
         WHERE j.status = 'waiting' AND j.suspect_of IS NOT NULL AND j.task_id = ANY (v_eligible)
         ORDER BY j.status, j.priority DESC, j.seq, j.suspect_of
         LIMIT 1) THEN
        v_suspect := {fragment:runs_no_suspect};
    END IF;

    -- candidates: up to each task's cap, locked (suspects only when this claim may take one);
    -- then taken greedily within the units budget, and at most one suspect
    FOR v_row IN
        SELECT c.job_id, c.task_id, c.process_units, c.suspect
          FROM unnest(v_eligible, v_caps) AS e(task_id, cap)
         CROSS JOIN LATERAL (
               SELECT j.job_id, j.task_id, j.priority, j.seq, t.process_units, j.suspect_of IS NOT NULL AS suspect
                 FROM {schema}.jobs AS j JOIN {schema}.tasks AS t ON t.task_id = j.task_id
                WHERE j.task_id = e.task_id AND {fragment:claimable}
                  AND (v_suspect OR j.suspect_of IS NULL)
                ORDER BY j.priority DESC, j.seq
                LIMIT greatest(e.cap, 0)
                  FOR NO KEY UPDATE OF j SKIP LOCKED) AS c
         ORDER BY c.priority DESC, c.seq
    LOOP
        CONTINUE WHEN v_row.process_units > v_left;
        IF v_row.suspect THEN
            CONTINUE WHEN NOT v_suspect;  -- one taken already
            v_suspect := false;
        END IF;
        v_left := v_left - v_row.process_units;
        v_ids := v_ids || v_row.job_id;
        EXIT WHEN cardinality(v_ids) >= p_limit;
    END LOOP;

    RETURN QUERY
    WITH
    -- the jobs taken, locked above (found by primary key)
    to_claim AS (
        SELECT j.job_id, p_worker AS worker_id FROM {schema}.jobs AS j
         WHERE j.job_id = ANY (v_ids)
    ),
    -- the jobs, running for this worker
    changed AS (
        {fragment:claim}
    ),
    -- the history: a 'running' event per job
    logged AS (
        {fragment:history}
    )
    SELECT c.job_id, c.task_id, c.priority, c.arguments, c.attempts, c.tries, c.trace_context
      FROM changed AS c;
END $$;
