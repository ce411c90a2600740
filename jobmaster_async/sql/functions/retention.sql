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


-- The jobs that may be pruned: each task's finished jobs, oldest first, read from
-- jobs_finished_idx (a range per task and status group, so tasks kept forever and protected
-- jobs cost nothing to skip but the few protected ones). p_older_than replaces every task's
-- retention when given. Not locked, not limited: callers do both. An internal helper, inlined
-- into its callers (a SQL function with no SET clause), which pin the search_path.
CREATE OR REPLACE FUNCTION {schema}._prunable_jobs(p_older_than interval)
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
               SELECT j.job_id FROM {schema}.jobs AS j
                WHERE j.task_id = c.task_id AND j.status = 'complete' AND j.finished_at < c.complete_before
               UNION ALL
               SELECT j.job_id FROM {schema}.jobs AS j
                WHERE j.task_id = c.task_id AND j.status IN ('failed', 'cancelled')
                  AND j.finished_at < c.finished_before
           ) AS f
     WHERE NOT EXISTS (SELECT 1
                         FROM {schema}.job_dependencies AS d
                         JOIN {schema}.jobs AS a ON a.job_id = d.job_id
                        WHERE d.depends_on = f.job_id AND a.status IN ('waiting', 'blocked', 'running'))
$$;


-- SQL API: deletes one batch of at most max_rows prunable jobs and their history, and returns
-- how many jobs it deleted (pg_cron users loop it while it returns max_rows). older_than NULL:
-- each task's retention; given: it replaces them all (the rules above still hold). Rows another
-- transaction holds are skipped, so it runs beside workers and other pruners.
CREATE OR REPLACE FUNCTION {schema}.prune_jobs(older_than interval, max_rows int DEFAULT 10000)
RETURNS bigint LANGUAGE sql VOLATILE {entry_point} AS $$
    WITH
    -- one batch, locked; the status is checked again on the locked row (a retry may have put a
    -- failed job back since the candidates were read)
    batch AS (
        SELECT j.job_id FROM {schema}.jobs AS j
         WHERE j.job_id IN (SELECT p.job_id FROM {schema}._prunable_jobs(older_than) AS p
                             LIMIT greatest(max_rows, 0))
           AND j.status IN ('complete', 'failed', 'cancelled')
           FOR UPDATE OF j SKIP LOCKED
    ),
    -- the jobs; their dependency links go with them (ON DELETE CASCADE)
    deleted AS (
        DELETE FROM {schema}.jobs AS j USING batch AS b WHERE j.job_id = b.job_id RETURNING j.job_id
    ),
    -- their history (job_events_job_idx)
    history AS (
        DELETE FROM {schema}.job_events AS e USING deleted AS d WHERE e.job_id = d.job_id
    )
    SELECT count(*) FROM deleted
$$;


-- How many jobs prune_jobs would delete now, in all (prune --dry-run). Reads, deletes nothing.
CREATE OR REPLACE FUNCTION {schema}.count_prunable_jobs(older_than interval)
RETURNS bigint LANGUAGE sql STABLE {search_path} AS $$
    SELECT count(*) FROM {schema}._prunable_jobs(older_than)
$$;
