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


DROP VIEW IF EXISTS {schema}.job_list;
CREATE VIEW {schema}.job_list AS
SELECT j.job_id, t.type_key, t.task_key, j.status, j.priority, j.arguments, j.attempts,
       j.created_at, j.run_at, j.started_at, j.finished_at,
       w.node AS worker_node, w.pid AS worker_pid, j.message
  FROM {schema}.jobs AS j
  JOIN {schema}.tasks AS t ON t.task_id = j.task_id
  LEFT JOIN {schema}.workers AS w ON w.worker_id = j.worker_id
 ORDER BY j.status IN ('running', 'waiting', 'blocked') DESC, j.created_at DESC, j.seq DESC;


-- Only the SQL interface is for everyone who is granted it; nothing else is callable by PUBLIC.
REVOKE ALL ON ALL ROUTINES IN SCHEMA {schema} FROM PUBLIC;
