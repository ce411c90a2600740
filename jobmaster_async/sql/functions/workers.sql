-- Workers: heartbeats and the rescue of the jobs of lost workers.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


-- A worker says it lives. One that was lost and heartbeats again (its row was rescued and
-- deleted: a database outage or a stall, not a death) did not die of the jobs taken from it: the
-- waiting ones are no longer suspects (DESIGN 9 "Lost workers"), so a mass outage does not hold
-- recovery to one suspect per worker. One already running elsewhere stays a suspect until it
-- ends: it holds only one slot of that worker, and a job that stalls its worker's event loop
-- past the lapse is then still caught. A probe of jobs_suspects_idx (empty while no worker is
-- lost) on each heartbeat.
CREATE OR REPLACE FUNCTION {schema}.heartbeat(
    p_worker uuid, p_node text, p_pid int, p_lapse double precision)
-- (sorts off: the probe goes along that index, in its order, which no other index gives, and jit
-- with them: why, migration 0016 and rescue_jobs below)
RETURNS void LANGUAGE plpgsql {entry_point} SET enable_sort = off SET enable_incremental_sort = off SET jit = off AS $$
BEGIN
    INSERT INTO {schema}.workers AS w (worker_id, node, pid, lapse)
    VALUES (p_worker, p_node, p_pid, p_lapse * interval '1 second')
    ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now(), lapse = excluded.lapse;
    IF (SELECT true FROM {schema}.jobs WHERE status = 'waiting' AND suspect_of = p_worker
         ORDER BY status, priority DESC, seq, suspect_of LIMIT 1) THEN
        -- rows another transaction holds are skipped (the next heartbeat clears them): a
        -- heartbeat never waits on a client's lock, nor deadlocks with one
        UPDATE {schema}.jobs AS j SET suspect_of = NULL
         WHERE j.job_id IN (SELECT s.job_id FROM {schema}.jobs AS s
                             WHERE s.status = 'waiting' AND s.suspect_of = p_worker
                             ORDER BY s.status, s.priority DESC, s.seq, s.suspect_of
                               FOR NO KEY UPDATE SKIP LOCKED);
    END IF;
END $$;


-- Jobs of workers whose heartbeat lapsed (or that are gone) go back to waiting, or fail when
-- their rescues are used up. Dead worker rows are locked SKIP LOCKED: one rescuer each. Every
-- worker calls this on each poll: bitmap scans are off for the reason the claim's are (fragment
-- claim_settings), and jit with them (before PostgreSQL 18 a disabled plan node is given a huge
-- cost, which would make JIT compile the statement on every call).
-- Suspects (DESIGN 9 "Lost workers"): every job put back is a suspect of the worker lost
-- (suspect_of), and a worker runs at most one suspect at a time (claim.sql claim_jobs). A rescue
-- is charged (rescues + 1, and the job fails once its task's rescues are used up) only to the one
-- job that was isolated when the worker died: the only suspect running on it, or, when it ran no
-- suspect, its only job. The others are put back uncharged, so the job that kills its worker
-- does not spend its neighbours' rescues: each of them then runs as the one suspect of a worker,
-- and the next loss of that worker is charged to it alone. A rescue keeps the lost worker in
-- worker_id (a retry or a release clears it). Writes the history (reason rescued, or failed).
CREATE OR REPLACE FUNCTION {schema}.rescue_jobs()
RETURNS int LANGUAGE plpgsql {entry_point} SET enable_bitmapscan = off SET jit = off AS $$
DECLARE
    v_dead  uuid[];
    v_count int;
    v_final uuid[];
    v_wake  boolean;
BEGIN
    SELECT coalesce(array_agg(w.worker_id), '{}') INTO v_dead
      FROM (SELECT w.worker_id FROM {schema}.workers AS w
             WHERE w.heartbeat_at < now() - w.lapse
               FOR UPDATE SKIP LOCKED) AS w;
    WITH
    -- running jobs of dead or unknown workers
    lost AS (
        SELECT j.job_id, j.worker_id, j.suspect_of FROM {schema}.jobs AS j
         WHERE j.status = 'running'
           AND (j.worker_id = ANY (v_dead)
                OR NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.worker_id = j.worker_id))
           FOR NO KEY UPDATE OF j SKIP LOCKED
    ),
    -- the lost workers all of whose running jobs were locked above (this statement's snapshot
    -- sees the ones another transaction holds too): a worker's jobs are judged together, so one
    -- with a job held elsewhere (a cancel on its way) waits for the next rescue, whole
    whole AS (
        SELECT l.worker_id FROM lost AS l
         GROUP BY l.worker_id
        HAVING count(*) = (SELECT count(*) FROM {schema}.jobs AS r
                            WHERE r.status = 'running' AND r.worker_id = l.worker_id)
    ),
    -- charged: the only suspect running on its lost worker, or its only job when it ran no suspect
    judged AS (
        SELECT l.job_id,
               CASE WHEN count(*) FILTER (WHERE l.suspect_of IS NOT NULL) OVER w > 0
                    THEN l.suspect_of IS NOT NULL AND count(*) FILTER (WHERE l.suspect_of IS NOT NULL) OVER w = 1
                    ELSE count(*) OVER w = 1 END AS charged
          FROM lost AS l
         WHERE l.worker_id IN (SELECT h.worker_id FROM whole AS h)
        WINDOW w AS (PARTITION BY l.worker_id)
    ),
    -- put back as suspects of the lost worker, without using up retries (the lost start is given
    -- back in tries; attempts keeps it); a charged one up to the task's rescues, after which it
    -- fails (a poison job stops there)
    changed AS (
        UPDATE {schema}.jobs AS j
           SET status = CASE WHEN NOT g.charged OR j.rescues < t.rescues THEN 'waiting' ELSE 'failed' END,
               reason = CASE WHEN NOT g.charged OR j.rescues < t.rescues THEN 'rescued' ELSE 'failed' END,
               finished_at = CASE WHEN NOT g.charged OR j.rescues < t.rescues THEN NULL ELSE now() END,
               tries = j.tries - CASE WHEN NOT g.charged OR j.rescues < t.rescues THEN 1 ELSE 0 END,
               rescues = j.rescues + g.charged::int,
               suspect_of = CASE WHEN NOT g.charged OR j.rescues < t.rescues THEN j.worker_id END,
               run_after = now(),
               message = CASE WHEN NOT g.charged
                              THEN format('worker %s lost (heartbeat lapsed) during attempt %s; put back as a suspect, rescue not counted: another job running there may have killed it (rescues %s of %s)',
                                          j.worker_id, j.attempts, j.rescues, t.rescues)
                              WHEN j.rescues < t.rescues
                              THEN format('worker %s lost (heartbeat lapsed) during attempt %s; put back (rescue %s of %s)',
                                          j.worker_id, j.attempts, j.rescues + 1, t.rescues)
                              ELSE format('worker %s lost (heartbeat lapsed) during attempt %s; failed: its worker was lost %s times (rescues=%s)',
                                          j.worker_id, j.attempts, j.rescues + 1, t.rescues) END
          FROM judged AS g, {schema}.tasks AS t
         WHERE j.job_id = g.job_id AND t.task_id = j.task_id
        RETURNING j.job_id, j.status, j.reason, j.worker_id, j.message, t.process_limit
    ),
    -- the history: a 'waiting' (rescued) or 'failed' event per job, by the lost worker
    logged AS (
        {fragment:history}
    )
    SELECT count(*)::int, coalesce(array_agg(r.job_id) FILTER (WHERE r.status = 'failed'), '{}'),
           coalesce(bool_or(r.status = 'waiting' OR r.process_limit IS NOT NULL), false)
      INTO v_count, v_final, v_wake FROM changed AS r;
    IF v_wake THEN
        PERFORM pg_notify({channel}, 'wake');
    END IF;
    UPDATE {schema}.jobs SET abandoned = false WHERE abandoned AND worker_id = ANY (v_dead);
    -- forgotten once none of its jobs is left running (one held elsewhere keeps it for the next rescue)
    DELETE FROM {schema}.workers AS w
     WHERE w.worker_id = ANY (v_dead)
       AND NOT EXISTS (SELECT 1 FROM {schema}.jobs AS r WHERE r.status = 'running' AND r.worker_id = w.worker_id);
    PERFORM {schema}._settle(v_final);
    RETURN v_count;
END $$;
