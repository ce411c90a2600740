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
BEGIN
    PERFORM {fragment:history_by_triggers};
    SELECT status INTO v_status FROM {schema}.jobs WHERE job_id = p_job_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_status NOT IN ('waiting', 'blocked', 'running') THEN
        RETURN v_status;
    END IF;
    WITH
    -- the job, and an "ALL" parent's unfinished children, cancelled
    cancelled AS (
        UPDATE {schema}.jobs AS j
           SET status = 'cancelled', finished_at = now(), message = 'cancelled', scheduled = false,
               suspect_of = NULL
         WHERE j.status IN ('waiting', 'blocked', 'running')
           AND (j.job_id = p_job_id
                OR j.job_id IN (SELECT d.depends_on FROM {schema}.job_dependencies AS d
                                  JOIN {schema}.jobs AS p ON p.job_id = d.job_id
                                 WHERE d.job_id = p_job_id AND p.is_parent))
        RETURNING j.job_id
    )
    SELECT array_agg(c.job_id) INTO v_children FROM cancelled AS c;
    PERFORM {schema}._settle(v_children);
    RETURN v_status;
END $$;


-- Queues a failed or cancelled job again, to run now (same id, its task's retries afresh,
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
    PERFORM {fragment:history_by_triggers};
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

    UPDATE {schema}.jobs
       SET status = v_status,
           max_attempts = v_job.attempts + v_task.retries + 1, run_after = now(), run_at = NULL,
           scheduled = false,
           started_at = NULL, finished_at = CASE WHEN v_failure IS NOT NULL THEN now() END,
           worker_id = NULL, result = NULL, error_type = NULL, traceback = NULL, suspect_of = NULL,
           message = coalesce(v_failure, 'retried')
     WHERE job_id = p_job_id;
    IF NOT v_job.is_parent AND v_status = 'blocked' THEN
        -- the dependencies it needs now are created in its own trace context
        PERFORM {schema}._carry_out_plan(v_plan, ARRAY[p_job_id], v_job.trace_context);
    END IF;
    RETURN p_job_id;
END $$;
