-- Retention (DESIGN 9 "Retention"): finished jobs and their history deleted once older than their
-- task's retention (tasks.retention, written by deploy(); NULL keeps them forever).
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.
--
-- Never deleted, whatever the retention:
--   - a complete job younger than the largest `hours` of any deployed Dependency on its task:
--     a dependent inserted later would find its dependency gone and run it again;
--   - a job that an active (waiting, blocked, running) job depends on, which includes the children
--     of an active "ALL" parent (the parent depends on each child).
-- Age is counted from finished_at.


-- The jobs that may be pruned: each task's finished jobs, oldest first, at most p_limit of each
-- (NULL: all), read from jobs_finished_idx in order (a range per task and status group: tasks
-- kept forever cost nothing, protected jobs are stepped over, not returned, so they never fill
-- a batch). Protected: a job an active job depends on (an "ALL" parent depends on each of its
-- children, so they are kept too). p_older_than replaces every task's retention when given. Not locked: callers lock.
-- An internal helper, inlined into its callers (a SQL function with no SET clause), which pin
-- the search_path.
CREATE OR REPLACE FUNCTION {schema}._prunable_jobs(p_older_than interval, p_limit int)
RETURNS TABLE (job_id uuid) LANGUAGE sql STABLE AS $$
    WITH
    -- how long a complete job of each task satisfies a dependency on it: the largest hours of
    -- any deployed Dependency on the task
    freshness AS (
        SELECT d.value->>'type_key' AS type_key, d.value->>'task_key' AS task_key,
               max((d.value->>'hours')::double precision) * interval '1 hour' AS fresh_for
          FROM {schema}.tasks AS t, jsonb_array_elements(t.dependencies) AS d
         GROUP BY 1, 2
    ),
    -- each task's cutoffs: a job finished before them may go; a complete one also has to be
    -- older than the freshness window. Tasks kept forever have none.
    cutoffs AS (
        SELECT t.task_id,
               now() - coalesce(p_older_than, t.retention) AS finished_before,
               least(now() - coalesce(p_older_than, t.retention),
                     now() - coalesce(f.fresh_for, interval '0')) AS complete_before
          FROM {schema}.tasks AS t
          LEFT JOIN freshness AS f ON f.type_key = t.type_key AND f.task_key = t.task_key
         WHERE coalesce(p_older_than, t.retention) IS NOT NULL
    )
    SELECT f.job_id
      FROM cutoffs AS c
     CROSS JOIN LATERAL (
               (SELECT j.job_id FROM {schema}.jobs AS j
                 WHERE j.task_id = c.task_id AND j.status = 'complete' AND j.finished_at < c.complete_before
                   AND NOT EXISTS (SELECT 1 FROM {schema}.job_dependencies AS d
                                     JOIN {schema}.jobs AS a ON a.job_id = d.job_id
                                    WHERE d.depends_on = j.job_id AND a.status IN ('waiting', 'blocked', 'running'))
                 ORDER BY j.finished_at LIMIT p_limit)
               UNION ALL
               (SELECT j.job_id FROM {schema}.jobs AS j
                 WHERE j.task_id = c.task_id AND j.status IN ('failed', 'cancelled')
                   AND j.finished_at < c.finished_before
                   AND NOT EXISTS (SELECT 1 FROM {schema}.job_dependencies AS d
                                     JOIN {schema}.jobs AS a ON a.job_id = d.job_id
                                    WHERE d.depends_on = j.job_id AND a.status IN ('waiting', 'blocked', 'running'))
                 ORDER BY j.finished_at LIMIT p_limit)
           ) AS f
$$;


-- SQL API: deletes one batch of at most max_rows prunable jobs and their history, and returns
-- how many jobs it deleted (pg_cron users loop it while it returns max_rows). older_than NULL:
-- each task's retention; given: it replaces them all (the rules above still hold). Rows another
-- transaction holds are skipped, so it runs beside workers and other pruners. Each step reads
-- its rows by index (= ANY of an array), whatever the planner thinks of a batch's size.
CREATE OR REPLACE FUNCTION {schema}.prune_jobs(older_than interval, max_rows int DEFAULT 10000)
RETURNS bigint LANGUAGE plpgsql VOLATILE {entry_point} AS $$
DECLARE
    v_limit      int := greatest(coalesce(max_rows, 10000), 0);
    v_candidates uuid[];
    v_ids        uuid[];
BEGIN
    v_candidates := ARRAY(SELECT p.job_id FROM {schema}._prunable_jobs(older_than, v_limit) AS p LIMIT v_limit);
    -- locked, and finished still (a retry may have put a failed job back since it was read)
    v_ids := ARRAY(SELECT j.job_id FROM {schema}.jobs AS j
                    WHERE j.job_id = ANY (v_candidates) AND j.status IN ('complete', 'failed', 'cancelled')
                      FOR UPDATE OF j SKIP LOCKED);
    -- the jobs (their dependency links go with them: ON DELETE CASCADE), then their history
    DELETE FROM {schema}.jobs AS j WHERE j.job_id = ANY (v_ids);
    DELETE FROM {schema}.job_events AS e WHERE e.job_id = ANY (v_ids);
    RETURN cardinality(v_ids);
END $$;


-- How many jobs prune_jobs would delete now, in all (prune --dry-run). Reads, deletes nothing.
CREATE OR REPLACE FUNCTION {schema}.count_prunable_jobs(older_than interval)
RETURNS bigint LANGUAGE sql STABLE {search_path} AS $$
    SELECT count(*) FROM {schema}._prunable_jobs(older_than, NULL)
$$;
