-- For people in psql (queue depth, the job list), and who may call what.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


-- How many jobs wait, are blocked, and run: a queue's depth, cheap however many finished jobs
-- the table keeps. Each count reads a partial index that holds exactly those jobs:
-- jobs_dedupe_idx (all three), one of the claim indexes and jobs_scheduled_idx (waiting),
-- jobs_running_idx (running);
-- blocked is the difference, exact because one statement sees one snapshot. Until vacuum,
-- finished jobs leave dead entries in those indexes. A bitmap scan, which the planner picks on
-- most statistics, visits the table for each of them on every call, so its cost grows with the
-- finished jobs; an index-only scan marks each dead entry once and skips it afterwards. Hence
-- the planner settings. Live jobs still cost a visit each until vacuum marks their pages
-- all-visible (benchmarks/README.md has the figures).
CREATE OR REPLACE FUNCTION {schema}.active_counts(OUT waiting bigint, OUT blocked bigint, OUT running bigint)
LANGUAGE sql STABLE
{search_path}
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
    WITH
    -- waiting, blocked or running: jobs_dedupe_idx
    active AS (SELECT count(*) AS n FROM {schema}.jobs WHERE status IN ('waiting', 'blocked', 'running')),
    -- waiting: claimable (jobs_claim_idx or jobs_task_claim_idx) and scheduled (jobs_scheduled_idx)
    waiting AS (SELECT (SELECT count(*) FROM {schema}.jobs WHERE status = 'waiting' AND NOT scheduled)
                     + (SELECT count(*) FROM {schema}.jobs WHERE status = 'waiting' AND scheduled) AS n),
    -- running: jobs_running_idx
    running AS (SELECT count(*) AS n FROM {schema}.jobs WHERE status = 'running')
    SELECT w.n, a.n - w.n - r.n, r.n FROM active AS a, waiting AS w, running AS r
$$;


-- How many jobs there are of each status (counts()): exact for the active ones (active_counts());
-- for the finished ones exact while the table is small, else the planner's estimate (the table's
-- rows, from pg_class, times the status's share, from pg_stats), because an exact count of
-- millions of finished jobs reads them all. small: fewer than 100,000 rows by the last vacuum
-- or analyze (or never measured).
CREATE OR REPLACE FUNCTION {schema}.status_counts()
RETURNS TABLE (status text, count bigint, exact boolean)
LANGUAGE plpgsql STABLE {search_path} AS $$
DECLARE
    -- the jobs table (the search path is pinned: pg_catalog has no "jobs")
    v_table   regclass := 'jobs'::regclass;
    v_rows    double precision;
    v_values  text[];
    v_shares  real[];
    v_rest    double precision;
    v_active  record;
BEGIN
    SELECT * INTO v_active FROM {schema}.active_counts();
    RETURN QUERY VALUES ('waiting', v_active.waiting, true), ('blocked', v_active.blocked, true),
                        ('running', v_active.running, true);
    SELECT c.reltuples INTO v_rows FROM pg_class AS c WHERE c.oid = v_table;
    IF v_rows < 100000 THEN
        RETURN QUERY
            SELECT f.status, coalesce(c.n, 0), true
              FROM unnest(ARRAY['complete', 'failed', 'cancelled']) AS f(status)
              LEFT JOIN (SELECT j.status, count(*) AS n FROM {schema}.jobs AS j
                          WHERE j.status IN ('complete', 'failed', 'cancelled')
                          GROUP BY j.status) AS c ON c.status = f.status;
        RETURN;
    END IF;
    SELECT s.most_common_vals::text::text[], s.most_common_freqs INTO v_values, v_shares
      FROM pg_stats AS s
      JOIN pg_class AS c ON c.relname = s.tablename
      JOIN pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = s.schemaname
     WHERE c.oid = v_table AND s.attname = 'status';
    -- the share of the statuses the statistics do not list, spread over them
    v_rest := greatest(1 - coalesce((SELECT sum(x) FROM unnest(v_shares) AS x), 0), 0)
              / greatest(6 - coalesce(cardinality(v_values), 0), 1);
    RETURN QUERY
        SELECT f.status,
               round(v_rows * coalesce(v_shares[array_position(v_values, f.status)], v_rest))::bigint,
               false
          FROM unnest(ARRAY['complete', 'failed', 'cancelled']) AS f(status);
END $$;


-- The job list for people in psql, newest first (the primary key serves the order: ids are
-- time-ordered). Arguments over 2 kB show as a JSON string of their first 200 characters and
-- "…", so that SELECT * FROM job_list LIMIT 20 stays readable and cheap.
DROP VIEW IF EXISTS {schema}.job_list;
CREATE VIEW {schema}.job_list AS
SELECT j.job_id, t.type_key, t.task_key, j.status, j.priority,
       CASE WHEN pg_catalog.pg_column_size(j.arguments) > 2048
            THEN pg_catalog.to_jsonb(pg_catalog.left(j.arguments::text, 200) || '…')
            ELSE j.arguments END AS arguments,
       j.attempts, j.created_at, j.run_at, j.started_at, j.finished_at,
       w.node AS worker_node, w.pid AS worker_pid, j.message
  FROM {schema}.jobs AS j
  JOIN {schema}.tasks AS t ON t.task_id = j.task_id
  LEFT JOIN {schema}.workers AS w ON w.worker_id = j.worker_id
 ORDER BY j.job_id DESC;


-- Only the SQL interface is for everyone who is granted it; nothing else is callable by PUBLIC.
REVOKE ALL ON ALL ROUTINES IN SCHEMA {schema} FROM PUBLIC;
