-- What the tools for people read (the dashboard, jobmaster_async.web, and the CLI, through
-- db/insights.py and JobMaster's read API), as named blocks
-- ("-- name: <name>"). Read-only statements: a role with SELECT on the tables they name runs them
-- all (README "Dashboard"). {schema} is the quoted schema name; parameters are $n only; built-ins
-- are pg_catalog-qualified, as in queries.sql (these are plain statements run with the
-- connection's search_path).

-- name: depth
-- The active jobs of each task by status (waiting split into due and scheduled), read along
-- jobs_dedupe_idx, whose predicate is exactly the active statuses (Insights runs it with
-- sequential and bitmap scans off, as active_counts() is: its cost follows the active jobs, not
-- the finished ones the table keeps).
SELECT t.type_key, t.task_key, a.status, a.scheduled, a.n
  FROM (SELECT j.task_id, j.status, j.scheduled, pg_catalog.count(*)::int AS n
          FROM {schema}.jobs AS j
         WHERE j.status IN ('waiting', 'blocked', 'running')
         GROUP BY j.task_id, j.status, j.scheduled) AS a
  JOIN {schema}.tasks AS t ON t.task_id = a.task_id
 ORDER BY t.type_key, t.task_key

-- name: workers
-- The workers that heartbeat, with the age of their last heartbeat (on the server's clock) and
-- how many jobs each runs (jobs_running_idx: the running jobs only).
SELECT w.worker_id, w.node, w.pid, w.started_at, w.heartbeat_at,
       pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - w.heartbeat_at)::float8 AS heartbeat_age,
       pg_catalog.date_part('epoch', w.lapse)::float8 AS lapse,
       coalesce(r.n, 0) AS running
  FROM {schema}.workers AS w
  LEFT JOIN (SELECT j.worker_id, pg_catalog.count(*)::int AS n FROM {schema}.jobs AS j
              WHERE j.status = 'running' GROUP BY j.worker_id) AS r ON r.worker_id = w.worker_id
 ORDER BY w.node, w.pid, w.worker_id

-- name: history_mark
-- Whether the history grew: the last value handed out for job_events.event_id, from its sequence
-- (no read of the table; $1: the table's qualified name). NULL until the first event. A change
-- tells the dashboard to read the charts again.
SELECT pg_catalog.pg_sequence_last_value(pg_catalog.pg_get_serial_sequence($1, 'event_id')::regclass) AS mark,
       pg_catalog.now() AS now

-- name: chart_hour
-- History events per minute and reason over the last hour, from the start of that minute: the
-- overview's charts. The condition on "at" alone, against a constant the planner can see (not
-- a parameter: a generic plan would guess a third of the table and read it all), lets the index
-- on job_events (at) serve it. The last row (reason NULL) says where the read began.
SELECT pg_catalog.date_trunc('minute', e.at) AS minute, e.reason, pg_catalog.count(*)::int AS n
  FROM {schema}.job_events AS e
 WHERE e.at >= pg_catalog.date_trunc('minute', pg_catalog.now() - interval '1 hour')
   AND e.reason IS NOT NULL
 GROUP BY 1, 2
UNION ALL
SELECT pg_catalog.date_trunc('minute', pg_catalog.now() - interval '1 hour'), NULL, 0

-- name: chart_recent
-- The same from the start of the previous minute: the charts' later reads, which replace those
-- buckets (the previous minute is read again once it is over, for the events it still got).
SELECT pg_catalog.date_trunc('minute', e.at) AS minute, e.reason, pg_catalog.count(*)::int AS n
  FROM {schema}.job_events AS e
 WHERE e.at >= pg_catalog.date_trunc('minute', pg_catalog.now() - interval '1 minute')
   AND e.reason IS NOT NULL
 GROUP BY 1, 2
UNION ALL
SELECT pg_catalog.date_trunc('minute', pg_catalog.now() - interval '1 minute'), NULL, 0

-- name: tasks
SELECT t.task_id, t.type_key, t.task_key FROM {schema}.tasks AS t ORDER BY t.type_key, t.task_key

-- name: find_jobs
-- The jobs whose id a person typed a part of (ids.py): those whose id starts with the digits (a
-- range of the primary key, $1 to $2: the index serves it) or ends with them ($3, a LIKE pattern
-- of the text form, without index: a scan, fine for a command a person types); $4 at most.
SELECT j.job_id, t.type_key, t.task_key, j.status, j.created_at
  FROM {schema}.jobs AS j JOIN {schema}.tasks AS t ON t.task_id = j.task_id
 WHERE j.job_id IN ((SELECT p.job_id FROM {schema}.jobs AS p
                      WHERE p.job_id >= $1::uuid AND p.job_id <= $2::uuid ORDER BY p.job_id LIMIT $4)
                    UNION ALL
                    (SELECT s.job_id FROM {schema}.jobs AS s WHERE s.job_id::text LIKE $3 LIMIT $4))
 ORDER BY j.created_at DESC, j.job_id
 LIMIT $4

-- name: schema_deployed
-- Whether the schema was ever deployed: its table of versions exists ($1: its qualified name).
SELECT pg_catalog.to_regclass($1) IS NOT NULL

-- name: jobs_page
-- A page of the job list, newest first, after the job $1 (NULL: from the newest). Keyset paging
-- along the primary key (job ids are time-ordered), never OFFSET: the inner subquery walks at
-- most $2 entries of it backwards (the scan bound: a rare filter costs at most that much), the
-- filters pick up to $7 of them: status $3, task $4, text $5 (a LIKE pattern matched against
-- the id, the arguments, the message and the task's name). The task's names are joined to the
-- page only. Columns cut: arguments and message at $6 characters (the list shows the start).
-- "After $1" is one condition on the key (no "$1 IS NULL OR ..."), so that the plan the server
-- caches for these parameters, whatever they are, starts the walk at $1.
SELECT p.job_id, t.type_key, t.task_key, p.status, p.priority, p.attempts, p.attempts - p.tries + t.retries + 1 AS max_attempts,
       p.created_at, p.started_at, p.finished_at, p.run_at, p.run_after, p.arguments, p.message
  FROM (SELECT j.job_id, j.task_id, j.status, j.priority, j.attempts, j.tries, j.created_at,
               j.started_at, j.finished_at, j.run_at, j.run_after,
               pg_catalog.left(j.arguments::text, $6) AS arguments, pg_catalog.left(j.message, $6) AS message
          FROM (SELECT s.* FROM {schema}.jobs AS s
                 WHERE s.job_id < coalesce($1::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')
                 ORDER BY s.job_id DESC
                 LIMIT $2) AS j
         WHERE ($3::text IS NULL OR j.status = $3::text)
           AND ($4::int IS NULL OR j.task_id = $4::int)
           AND ($5::text IS NULL
                OR j.job_id::text ILIKE $5::text OR j.arguments::text ILIKE $5::text OR j.message ILIKE $5::text
                OR j.task_id IN (SELECT k.task_id FROM {schema}.tasks AS k
                                  WHERE (k.type_key || '.' || k.task_key) ILIKE $5::text))
         ORDER BY j.job_id DESC
         LIMIT $7) AS p
  JOIN {schema}.tasks AS t ON t.task_id = p.task_id
 ORDER BY p.job_id DESC

-- name: active_jobs_page
-- jobs_page for one active status $2 (waiting, blocked or running): those are few beside the
-- finished jobs, so they are found through the partial indexes of the active statuses (the
-- first condition lets even a generic plan use them) and every one is looked at (no scan
-- bound). $1: after this job; $3: task; $4: text; $5: cut; $6: how many (as jobs_page).
SELECT p.job_id, t.type_key, t.task_key, p.status, p.priority, p.attempts, p.attempts - p.tries + t.retries + 1 AS max_attempts,
       p.created_at, p.started_at, p.finished_at, p.run_at, p.run_after, p.arguments, p.message
  FROM (SELECT j.job_id, j.task_id, j.status, j.priority, j.attempts, j.tries, j.created_at,
               j.started_at, j.finished_at, j.run_at, j.run_after,
               pg_catalog.left(j.arguments::text, $5) AS arguments, pg_catalog.left(j.message, $5) AS message
          FROM {schema}.jobs AS j
         WHERE j.status IN ('waiting', 'blocked', 'running') AND j.status = $2::text
           AND j.job_id < coalesce($1::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')
           AND ($3::int IS NULL OR j.task_id = $3::int)
           AND ($4::text IS NULL
                OR j.job_id::text ILIKE $4::text OR j.arguments::text ILIKE $4::text OR j.message ILIKE $4::text
                OR j.task_id IN (SELECT k.task_id FROM {schema}.tasks AS k
                                  WHERE (k.type_key || '.' || k.task_key) ILIKE $4::text))
         ORDER BY j.job_id DESC
         LIMIT $6) AS p
  JOIN {schema}.tasks AS t ON t.task_id = p.task_id
 ORDER BY p.job_id DESC

-- name: scan_end
-- Where jobs_page's scan bound stopped: the oldest of the $2 jobs after $1 (an index-only walk of
-- the primary key), and how many there were (fewer than $2: the list's end was reached).
SELECT pg_catalog.min(s.job_id::text)::uuid AS last_id, pg_catalog.count(*)::int AS n
  FROM (SELECT j.job_id FROM {schema}.jobs AS j
         WHERE j.job_id < coalesce($1::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')
         ORDER BY j.job_id DESC
         LIMIT $2) AS s

-- name: depends_on
-- The jobs job $1 waits (or waited) for, and theirs, down to $2 levels, at most $3 rows: the
-- dependency tree above a job (dependent: the job whose dependency the row is).
WITH RECURSIVE up AS (
    SELECT d.job_id AS dependent, d.depends_on AS job_id, 1 AS depth
      FROM {schema}.job_dependencies AS d WHERE d.job_id = $1
    UNION ALL
    SELECT d.job_id, d.depends_on, u.depth + 1
      FROM up AS u JOIN {schema}.job_dependencies AS d ON d.job_id = u.job_id
     WHERE u.depth < $2
)
SELECT u.dependent, u.job_id, u.depth, t.type_key, t.task_key, j.status, j.arguments
  FROM (SELECT * FROM up LIMIT $3) AS u
  JOIN {schema}.jobs AS j ON j.job_id = u.job_id
  JOIN {schema}.tasks AS t ON t.task_id = j.task_id

-- name: dependents
-- The jobs that wait (or waited) for job $1, and theirs, up to $2 levels, at most $3 rows
-- (job_dependencies_depends_on_idx): the tree below a job (dependent: the row's job, waiting
-- for depends_on).
WITH RECURSIVE down AS (
    SELECT d.depends_on, d.job_id, 1 AS depth
      FROM {schema}.job_dependencies AS d WHERE d.depends_on = $1
    UNION ALL
    SELECT d.depends_on, d.job_id, w.depth + 1
      FROM down AS w JOIN {schema}.job_dependencies AS d ON d.depends_on = w.job_id
     WHERE w.depth < $2
)
SELECT w.depends_on, w.job_id, w.depth, t.type_key, t.task_key, j.status, j.arguments
  FROM (SELECT * FROM down LIMIT $3) AS w
  JOIN {schema}.jobs AS j ON j.job_id = w.job_id
  JOIN {schema}.tasks AS t ON t.task_id = j.task_id

-- name: worker_of
-- Where a job's worker runs (node, pid): its heartbeat row, else the last history event of the
-- job that named it.
SELECT coalesce(w.node, e.node) AS node, coalesce(w.pid, e.pid) AS pid, w.worker_id IS NOT NULL AS alive
  FROM (SELECT 1) AS one
  LEFT JOIN {schema}.workers AS w ON w.worker_id = $2
  LEFT JOIN LATERAL (SELECT x.node, x.pid FROM {schema}.job_events AS x
                      WHERE x.job_id = $1 AND x.worker_id = $2
                      ORDER BY x.event_id DESC LIMIT 1) AS e ON true

-- name: clock
-- The server's clock, less $1 (an interval): where the metrics' first window starts.
SELECT pg_catalog.clock_timestamp() - $1::interval

-- name: metrics_window
-- What the history says happened in [$1, the server's clock less $2): the metrics' window, which
-- the next scrape starts where this one ended (web/metrics.py says why $2 lags behind the clock).
-- Run with plan_cache_mode = force_custom_plan: planned for its own $1, the window is seen to be
-- small (a generic plan would guess a third of the table and read it all).
-- Rows: ('outcome', task, reason, count); ('run', task, NULL, count, seconds of each run that
-- ended: claim to outcome); ('start_delay', task, NULL, count, seconds of each start: due time to
-- claim); last, ('window', ..., upto) with the window's end. The condition on "at" alone lets the
-- index on job_events (at) serve it; the rest goes along job_events_job_idx.
WITH
upto AS (SELECT pg_catalog.clock_timestamp() - $2::interval AS at),
events AS (
    SELECT e.event_id, e.job_id, e.reason, e.at, j.task_id, j.run_after
      FROM {schema}.job_events AS e
      JOIN {schema}.jobs AS j ON j.job_id = e.job_id
     WHERE e.at >= $1::timestamptz AND e.at < (SELECT u.at FROM upto AS u)
       AND e.reason IN ('completed', 'failed', 'retried', 'rescued', 'cancelled', 'claimed')
),
-- each run that ended in the window: from the claim just before its outcome
runs AS (
    SELECT e.task_id, pg_catalog.date_part('epoch', e.at - p.at)::float8 AS seconds
      FROM events AS e
     CROSS JOIN LATERAL (SELECT x.reason, x.at FROM {schema}.job_events AS x
                          WHERE x.job_id = e.job_id AND x.event_id < e.event_id
                          ORDER BY x.event_id DESC LIMIT 1) AS p
     WHERE e.reason IN ('completed', 'failed', 'retried') AND p.reason = 'claimed'
),
-- each start in the window: from its due time, the later of when the job last became waiting
-- and the time it was to run at (run_after, unless it moved past this claim since)
starts AS (
    SELECT e.task_id,
           greatest(0, pg_catalog.date_part('epoch', e.at - greatest(
               w.at, CASE WHEN e.run_after <= e.at THEN e.run_after END)))::float8 AS seconds
      FROM events AS e
     CROSS JOIN LATERAL (SELECT x.at FROM {schema}.job_events AS x
                          WHERE x.job_id = e.job_id AND x.event_id < e.event_id AND x.status = 'waiting'
                          ORDER BY x.event_id DESC LIMIT 1) AS w
     WHERE e.reason = 'claimed'
)
SELECT 'outcome' AS kind, e.task_id, e.reason AS label, pg_catalog.count(*)::int AS n,
       NULL::float8[] AS seconds, NULL::timestamptz AS upto
  FROM events AS e WHERE e.reason <> 'claimed' GROUP BY e.task_id, e.reason
UNION ALL
SELECT 'run', r.task_id, NULL, pg_catalog.count(*)::int, pg_catalog.array_agg(r.seconds), NULL
  FROM runs AS r GROUP BY r.task_id
UNION ALL
SELECT 'start_delay', s.task_id, NULL, pg_catalog.count(*)::int, pg_catalog.array_agg(s.seconds), NULL
  FROM starts AS s WHERE s.seconds IS NOT NULL GROUP BY s.task_id
UNION ALL
SELECT 'window', NULL, NULL, NULL, NULL, u.at FROM upto AS u
