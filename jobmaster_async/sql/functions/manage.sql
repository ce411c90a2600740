-- Managing jobs: cancel and retry.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


-- Cancels a waiting, blocked or running job (a running one's worker is told through NOTIFY);
-- an "ALL" parent takes its unfinished children along. Returns the job's status before.
CREATE OR REPLACE FUNCTION {schema}.cancel_job(p_job_id uuid)
RETURNS text LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_status   text;
    v_children uuid[];
    v_running  uuid[];
    v_wake     boolean;
    v_job_id   uuid;
BEGIN
    SELECT status INTO v_status FROM {schema}.jobs WHERE job_id = p_job_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_status NOT IN ('waiting', 'blocked', 'running') THEN
        RETURN v_status;
    END IF;
    WITH
    -- the job, and an "ALL" parent's unfinished children, locked, with their status before
    targets AS (
        SELECT j.job_id, j.status FROM {schema}.jobs AS j
         WHERE j.status IN ('waiting', 'blocked', 'running')
           AND (j.job_id = p_job_id
                OR j.job_id IN (SELECT d.depends_on FROM {schema}.job_dependencies AS d
                                  JOIN {schema}.jobs AS p ON p.job_id = d.job_id
                                 WHERE d.job_id = p_job_id AND p.is_parent))
           FOR NO KEY UPDATE OF j
    ),
    -- cancelled
    changed AS (
        UPDATE {schema}.jobs AS j
           SET status = 'cancelled', finished_at = now(), message = 'cancelled', scheduled = false,
               suspect_of = NULL, reason = 'cancelled'
          FROM targets AS g
         WHERE j.job_id = g.job_id
        RETURNING j.job_id, j.task_id, j.status, j.reason, j.worker_id, j.message, g.status AS old_status
    ),
    -- the history: a 'cancelled' event per job
    logged AS (
        {fragment:history}
    )
    SELECT array_agg(c.job_id),
           array_agg(c.job_id) FILTER (WHERE c.old_status = 'running'),
           coalesce(bool_or(c.old_status = 'running' AND t.process_limit IS NOT NULL), false)
      INTO v_children, v_running, v_wake
      FROM changed AS c LEFT JOIN {schema}.tasks AS t ON t.task_id = c.task_id;
    -- a process_limit slot freed: wake the workers; tell the workers of cancelled running jobs
    IF v_wake THEN
        PERFORM pg_notify({channel}, 'wake');
    END IF;
    FOREACH v_job_id IN ARRAY coalesce(v_running, '{}') LOOP
        PERFORM pg_notify({channel}, 'cancel:' || v_job_id);
    END LOOP;
    PERFORM {schema}._settle(v_children);
    RETURN v_status;
END $$;


-- Queues a failed or cancelled job again, to run now (same id, its task's retries afresh: tries 0,
-- dependencies resolved afresh, its run_at forgotten; attempts keeps counting, for fencing). If
-- an identical job is active, its id is returned instead.
CREATE OR REPLACE FUNCTION {schema}.retry_job(p_job_id uuid)
RETURNS uuid LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_job     {schema}.jobs;
    v_task    {schema}.tasks;
    v_twin    uuid;
    v_status  text := 'waiting';
    v_failure text;
    v_plan    {schema}.plan_step[];
    v_child   uuid;
BEGIN
    SELECT * INTO v_job FROM {schema}.jobs WHERE job_id = p_job_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_job.status NOT IN ('failed', 'cancelled') THEN
        PERFORM {schema}._refuse('not_retryable',
            format('job %s is %s: only failed or cancelled jobs can be retried', p_job_id, v_job.status));
    END IF;
    v_twin := {schema}._active_twin(v_job.task_id, v_job.args_hash);
    IF v_twin IS NOT NULL THEN
        RETURN v_twin;
    END IF;
    SELECT * INTO v_task FROM {schema}.tasks WHERE task_id = v_job.task_id;

    IF v_job.is_parent THEN
        -- retry the children that did not complete; the parent waits for them again
        FOR v_child IN
            SELECT d.depends_on FROM {schema}.job_dependencies AS d
              JOIN {schema}.jobs AS x ON x.job_id = d.depends_on
             WHERE d.job_id = p_job_id AND x.status IN ('failed', 'cancelled')
        LOOP
            v_twin := {schema}.retry_job(v_child);
            IF v_twin <> v_child THEN
                -- an identical active job stands in for the child: checked at commit (_check_link)
                DELETE FROM {schema}.job_dependencies WHERE job_id = p_job_id AND depends_on = v_child;
                INSERT INTO {schema}.job_dependencies (job_id, depends_on, check_at_commit)
                VALUES (p_job_id, v_twin, true) ON CONFLICT DO NOTHING;
            END IF;
        END LOOP;
        v_status := 'blocked';  -- until _settle moves it
    ELSIF jsonb_array_length(v_task.dependencies) > 0 THEN
        DELETE FROM {schema}.job_dependencies WHERE job_id = p_job_id;
        v_plan := {schema}._plan_dependencies(v_task, v_job.priority, ARRAY[v_job.arguments]);
        SELECT v.status, v.failure INTO v_status, v_failure FROM {schema}._plan_verdicts(v_plan) AS v;
    END IF;

    WITH
    -- the job, queued again
    requeued AS (
        UPDATE {schema}.jobs AS j
           SET status = v_status, reason = CASE WHEN v_status = 'failed' THEN 'failed' ELSE 'requeued' END,
               tries = 0, run_after = now(), run_at = NULL,
               scheduled = false,
               started_at = NULL, finished_at = CASE WHEN v_failure IS NOT NULL THEN now() END,
               worker_id = NULL, result = NULL, error_type = NULL, traceback = NULL, suspect_of = NULL,
               message = coalesce(v_failure, 'retried')
         WHERE j.job_id = p_job_id
        RETURNING j.job_id, j.status, j.reason, v_job.worker_id AS worker_id, j.message
    ),
    -- its status change (none when it fails again: a dependency it needs cannot be had), by the
    -- worker it last ran on, if any
    changed AS (
        SELECT r.* FROM requeued AS r WHERE r.status <> v_job.status
    ),
    -- the history
    logged AS (
        {fragment:history}
    )
    SELECT r.job_id INTO v_twin FROM requeued AS r;
    IF v_status = 'waiting' THEN
        PERFORM pg_notify({channel}, 'wake');
    END IF;
    IF NOT v_job.is_parent AND v_status = 'blocked' THEN
        -- the dependencies it needs now are created in its own trace context
        PERFORM {schema}._carry_out_plan(v_plan, ARRAY[p_job_id], v_job.trace_context);
    END IF;
    RETURN p_job_id;
END $$;
