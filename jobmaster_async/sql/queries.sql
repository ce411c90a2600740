-- Queries the Python side runs, as named blocks ("-- name: <name>"). {schema} is the quoted
-- schema name; parameters are $n only.
-- These run with the connection's search_path, which the library does not set (PgBouncer would
-- drop it) and another role may have planted functions in: every built-in function is written
-- pg_catalog-qualified. (Operators need not be: those used here match pg_catalog's exactly, and
-- pg_catalog is searched first unless a search_path names it later, which ours never do.)

-- name: insert_job
-- $5: run_at, or $6: run in that long from now (the server's clock); both NULL: now. $7, $8: the
-- inserter's W3C traceparent and tracestate (NULL: none)
SELECT {schema}._insert_job($1, $2, $3, $4::text::jsonb, coalesce($5::timestamptz, pg_catalog.now() + $6::interval),
                            {schema}._trace_context($7, $8))

-- name: insert_job_fast
-- The common insert as one plain statement (no PL/pgSQL): a task without dependencies or
-- write_all, arguments that _fast_canonical accepts, a run_at that _run_at_ok accepts, no
-- identical active job. Otherwise it inserts nothing and returns no row, and insert_job above
-- does it all (and says what it refuses).
-- $5, $6: the run_at of insert_job above; $7, $8: its trace context.
WITH
-- the task, unless inserting its jobs needs more than this statement does
task AS (
    SELECT t.* FROM {schema}.tasks AS t
     WHERE t.type_key = $1 AND t.task_key = $2
       AND pg_catalog.jsonb_array_length(t.dependencies) = 0 AND pg_catalog.cardinality(t.write_all) = 0
),
-- the job to insert, if its arguments fit (canonical); this statement writes its own history
-- (logged), so it gives the reason, and the jobs_inserted trigger skips the job (the contract:
-- functions/triggers.sql)
waiting_jobs AS (
    SELECT t.task_id, coalesce($3, 0) AS priority, c.args AS arguments,
           pg_catalog.md5(c.args::text)::uuid AS args_hash, t.is_dependency,
           coalesce($5::timestamptz, pg_catalog.now() + $6::interval) AS run_at,
           {schema}._trace_context($7, $8) AS trace_context, 'inserted' AS reason
      FROM task AS t
     -- OFFSET 0 keeps the subquery whole, so the arguments are made canonical once, not once for
     -- each use of c.args below
     CROSS JOIN LATERAL (SELECT {schema}._fast_canonical(t, coalesce($4::text::jsonb, '{}')) AS args OFFSET 0) AS c
     WHERE c.args IS NOT NULL
       -- a run_at outside the range: insert_job refuses it
       AND {schema}._run_at_ok(coalesce($5::timestamptz, pg_catalog.now() + $6::interval))
),
-- the job, unless an identical one is active
inserted AS (
{fragment:insert_waiting}
),
-- the history: its 'waiting' event
logged AS (
    INSERT INTO {schema}.job_events (job_id, status, reason, node, pid)
    SELECT i.job_id, 'waiting', 'inserted', w.node, w.pid FROM inserted AS i, {schema}._event_origin(NULL) AS w
)
SELECT i.job_id, pg_catalog.pg_notify({channel}, 'wake') FROM inserted AS i

-- name: insert_jobs
-- $4: the elements as one JSON array (one json.dumps in Python, one parse here); $5, $6: the
-- run_at of insert_job above; $7, $8: its trace context
SELECT {schema}._insert_jobs($1, $2, $3, ARRAY(SELECT e.a FROM pg_catalog.jsonb_array_elements($4::text::jsonb)
                                                             WITH ORDINALITY AS e(a, n) ORDER BY e.n),
                             coalesce($5::timestamptz, pg_catalog.now() + $6::interval),
                             {schema}._trace_context($7, $8))

-- name: claim_jobs
SELECT job_id, task_id, priority, arguments, attempts, tries, trace_context
  FROM {schema}.claim_jobs($1, $2, $3, $4)

-- name: claim_jobs_fast
-- The common claim as one plain statement (db/claimer.py): when none of the tasks $2 has a
-- process_limit, the units budget $4 cannot be exceeded by $3 jobs, and no suspect of these tasks
-- is claimable. Returns one row: the jobs claimed, as arrays by position (job_ids, task_ids,
-- priorities, arguments, attempts, tries, trace_contexts: empty when none); slow: nothing was
-- claimed because claim_jobs() must do it (limits, or a claimable suspect: it takes suspects one
-- per worker); scheduled_in: in how many seconds the earliest scheduled job of these tasks falls
-- due (NULL: none; at most 0 when one is due, which the claimer then promotes: promote_due_jobs);
-- due_in: in how many a job of theirs may be claimable (0 when one this claim skipped is, else
-- scheduled_in; only computed when fewer than $3 were claimed, for the dispatcher's idle wait;
-- NULL otherwise).
WITH
-- the claim's request, as fragment limits_apply asks it
request AS (
    SELECT $2::int[] AS task_ids, $3::int AS lim, $4::int AS units
),
-- must this claim respect limits, or is a suspect of these tasks claimable (suspects run one per
-- worker: DESIGN 9 "Lost workers")? Then claim_jobs() does it and this claims nothing. The second
-- is a probe of jobs_suspects_idx, empty while no worker is lost: the claim costs the same
-- then, and claims take the slower way only while suspects wait. (In that index's order, which
-- no other index gives: not an EXISTS, which would drop the order; why: migration 0016.)
mode AS (
    SELECT (SELECT {fragment:limits_apply} FROM request AS r)
           OR (SELECT true FROM {schema}.jobs AS j
                WHERE j.status = 'waiting' AND NOT j.scheduled AND j.suspect_of IS NOT NULL
                  AND j.task_id = ANY ($2::int[])
                ORDER BY j.status, j.priority DESC, j.seq, j.suspect_of
                LIMIT 1) IS NOT NULL AS slow,
           {fragment:claim_commit} AS claim_commit
),
-- the next runnable jobs, locked; rows other claimers hold are skipped (no suspect: while one
-- is claimable this claims nothing, above; the test is a filter on rows read anyway)
to_claim AS (
    SELECT j.job_id, $1::uuid AS worker_id FROM {schema}.jobs AS j
     WHERE {fragment:claimable}
       AND j.task_id = ANY ($2::int[]) AND j.suspect_of IS NULL AND NOT (SELECT m.slow FROM mode AS m)
     ORDER BY j.priority DESC, j.seq
     LIMIT $3
       FOR NO KEY UPDATE SKIP LOCKED
),
-- the jobs, running for this worker
changed AS (
{fragment:claim}
),
-- the earliest scheduled job of these tasks: the first entry of jobs_scheduled_idx, in time order
next_scheduled AS (
    SELECT j.run_after FROM {schema}.jobs AS j
     WHERE j.status = 'waiting' AND j.scheduled AND j.task_id = ANY ($2::int[])
     ORDER BY j.run_after
     LIMIT 1
),
-- the history: a 'running' event per job
logged AS (
{fragment:history}
)
SELECT coalesce(pg_catalog.array_agg(c.job_id), '{}') AS job_ids,
       coalesce(pg_catalog.array_agg(c.task_id), '{}') AS task_ids,
       coalesce(pg_catalog.array_agg(c.priority), '{}') AS priorities,
       coalesce(pg_catalog.array_agg(c.arguments), '{}') AS arguments,
       coalesce(pg_catalog.array_agg(c.attempts), '{}') AS attempts,
       coalesce(pg_catalog.array_agg(c.tries), '{}') AS tries,
       coalesce(pg_catalog.array_agg(c.trace_context), '{}') AS trace_contexts,
       (SELECT m.slow FROM mode AS m) AS slow,
       (SELECT pg_catalog.date_part('epoch', s.run_after) - pg_catalog.date_part('epoch', pg_catalog.clock_timestamp())
          FROM next_scheduled AS s) AS scheduled_in,
       (SELECT pg_catalog.date_part('epoch', least(
                   -- a claimable job this claim did not take (another claimer holds it), found
                   -- along the claim index as to_claim is: an EXISTS would let statistics that
                   -- are stale (as a queue's always are) pick a scan of the whole table
                   (SELECT pg_catalog.now() FROM {schema}.jobs AS j
                     WHERE {fragment:claimable} AND j.task_id = ANY ($2::int[])
                       -- not a suspect: one may be what this worker may not take now (it runs
                       -- one), which would make it claim again at once until that one ends
                       AND j.suspect_of IS NULL
                       -- this statement's snapshot still sees the jobs it claimed as waiting
                       AND NOT EXISTS (SELECT 1 FROM changed AS c WHERE c.job_id = j.job_id)
                     ORDER BY j.priority DESC, j.seq
                     LIMIT 1),
                   n.run_after)) - pg_catalog.date_part('epoch', pg_catalog.clock_timestamp())
          FROM (SELECT (SELECT s.run_after FROM next_scheduled AS s) AS run_after) AS n
         WHERE (SELECT pg_catalog.count(*) FROM changed) < $3 AND NOT (SELECT m.slow FROM mode AS m)) AS due_in
  FROM changed AS c

-- name: complete_jobs
SELECT {schema}.complete_jobs($1, $2, $3, $4::text[]::jsonb[])

-- name: fail_jobs
SELECT {schema}.fail_jobs($1, $2, $3, $4, $5, $6, $7)

-- name: outcomes_recorded_by
-- Of the jobs $2 whose outcome worker $1 did not find held, those whose latest event by that
-- worker records an outcome (completed, failed, retried): an earlier try of the same outcome
-- committed although its answer was lost (a deadline passed while the statement waited for a
-- lock). Rescues, releases and cancels of its jobs carry the worker too, so a job fenced out
-- ends on one of those. job_events_job_idx serves each job's latest events.
SELECT i.job_id
  FROM pg_catalog.unnest($2::uuid[]) AS i(job_id)
 WHERE (SELECT e.reason FROM {schema}.job_events AS e
         WHERE e.job_id = i.job_id AND e.worker_id = $1
         ORDER BY e.event_id DESC LIMIT 1) IN ('completed', 'failed', 'retried')

-- name: release_jobs
SELECT {schema}.release_jobs($1, $2, $3)

-- name: heartbeat
SELECT {schema}.heartbeat($1, $2, $3, $4)

-- name: set_abandoned
UPDATE {schema}.jobs SET abandoned = $2 WHERE job_id = $1

-- name: remove_worker
DELETE FROM {schema}.workers WHERE worker_id = $1

-- name: rescue_jobs
SELECT {schema}.rescue_jobs()

-- name: cancel_job
SELECT {schema}.cancel_job($1)

-- name: retry_job
SELECT {schema}.retry_job($1)

-- name: task_ids
SELECT task_id, type_key, task_key FROM {schema}.tasks

-- name: get_job
SELECT j.job_id, t.type_key, t.task_key, j.priority, j.arguments, j.status, j.attempts,
       j.attempts - j.tries + t.retries + 1 AS max_attempts, j.result, j.message, j.error_type, j.traceback, j.is_parent,
       j.created_at, j.started_at, j.finished_at, j.run_after, j.worker_id, j.rescues, j.run_at,
       j.trace_context
  FROM {schema}.jobs AS j JOIN {schema}.tasks AS t ON t.task_id = j.task_id
 WHERE j.job_id = $1

-- name: list_jobs
SELECT j.job_id, t.type_key, t.task_key, j.priority, j.arguments, j.status, j.attempts,
       j.attempts - j.tries + t.retries + 1 AS max_attempts, j.result, j.message, j.error_type, j.traceback, j.is_parent,
       j.created_at, j.started_at, j.finished_at, j.run_after, j.worker_id, j.rescues, j.run_at,
       j.trace_context
  FROM {schema}.jobs AS j JOIN {schema}.tasks AS t ON t.task_id = j.task_id
 WHERE ($1::text IS NULL OR j.status = $1)
   AND ($2::text IS NULL OR t.type_key = $2)
   AND ($3::text IS NULL OR t.task_key = $3)
 ORDER BY j.job_id DESC
 LIMIT $4

-- name: held_jobs
-- The jobs the database says worker $1 holds: after an outage the dispatcher puts back those it
-- does not know of (jobs_running_idx serves status = 'running')
SELECT job_id, attempts FROM {schema}.jobs WHERE status = 'running' AND worker_id = $1

-- name: job_events
SELECT status, reason, at, worker_id, node, pid, message
  FROM {schema}.job_events WHERE job_id = $1 ORDER BY event_id

-- name: job_dependencies
SELECT d.depends_on AS job_id, t.type_key, t.task_key, j.status
  FROM {schema}.job_dependencies AS d
  JOIN {schema}.jobs AS j ON j.job_id = d.depends_on
  JOIN {schema}.tasks AS t ON t.task_id = j.task_id
 WHERE d.job_id = $1

-- name: seconds_to_next_run
-- In how many seconds a job of the tasks $1 may be claimable: 0 when one is (held by another
-- claimer, or held back by a process_limit), else when the earliest scheduled one falls due (NULL: none).
-- Times are subtracted as epochs (floats), never as timestamps: a row stored before run_at was
-- bounded may hold infinity, which timestamp subtraction refuses before PostgreSQL 17 (and the
-- worker must not die of a job's data); it answers Infinity.
SELECT pg_catalog.date_part('epoch', least(
           -- along the claim index (why not EXISTS: claim_jobs_fast)
           (SELECT pg_catalog.now() FROM {schema}.jobs
             WHERE status = 'waiting' AND NOT scheduled AND task_id = ANY ($1::int[])
               AND suspect_of IS NULL  -- why: claim_jobs_fast
             ORDER BY priority DESC, seq
             LIMIT 1),
           (SELECT run_after FROM {schema}.jobs
             WHERE status = 'waiting' AND scheduled AND task_id = ANY ($1::int[])
             ORDER BY run_after
             LIMIT 1))) - pg_catalog.date_part('epoch', pg_catalog.clock_timestamp())

-- name: promote_due_jobs
SELECT {schema}.promote_due_jobs()

-- name: deployed_tasks
SELECT type_key, task_key, parameters, dependencies FROM {schema}.tasks

-- name: upsert_task
-- $1: the task definitions deploy() writes, as a JSON array of rows whose fields are named after
-- the columns (definitions/task.py TaskDefinition.to_row); the columns listed are the fields
-- TaskDefinition marks as columns (tests/test_deploy.py checks that they are the same)
WITH
-- the rows, each field read into the column of its name and type
given AS (
    SELECT r.* FROM pg_catalog.jsonb_populate_recordset(NULL::{schema}.tasks, $1::text::jsonb) AS r
)
INSERT INTO {schema}.tasks AS t (
       type_key, task_key, parameters, dependencies, process_units, process_limit, write_all,
       retries, rescues, timeout, executor, retention, description)
SELECT type_key, task_key, parameters, dependencies, process_units, process_limit, write_all,
       retries, rescues, timeout, executor, retention, description
  FROM given
ON CONFLICT (type_key, task_key) DO UPDATE
   SET (type_key, task_key, parameters, dependencies, process_units, process_limit, write_all,
       retries, rescues, timeout, executor, retention, description) =
       ROW(excluded.type_key, excluded.task_key, excluded.parameters, excluded.dependencies,
           excluded.process_units, excluded.process_limit, excluded.write_all, excluded.retries,
           excluded.rescues, excluded.timeout, excluded.executor, excluded.retention,
           excluded.description),
       updated_at = pg_catalog.now()

-- name: mark_dependency_targets
WITH
-- every task some task depends on
targets AS (
    SELECT DISTINCT d.value->>'type_key' AS type_key, d.value->>'task_key' AS task_key
      FROM {schema}.tasks AS t, pg_catalog.jsonb_array_elements(t.dependencies) AS d
),
-- the flag on the tasks
flagged AS (
    UPDATE {schema}.tasks AS t
       SET is_dependency = EXISTS (SELECT 1 FROM targets AS g
                                    WHERE g.type_key = t.type_key AND g.task_key = t.task_key)
    RETURNING t.task_id, t.is_dependency
)
-- and on their jobs, so their arguments are indexed for matching
UPDATE {schema}.jobs AS j SET is_dependency = f.is_dependency
  FROM flagged AS f
 WHERE j.task_id = f.task_id AND j.is_dependency <> f.is_dependency

-- name: prune_tasks
WITH
-- the tasks not registered here ($1, $2) and without active jobs
pruned AS (
    DELETE FROM {schema}.tasks AS t
     WHERE NOT ((t.type_key, t.task_key) IN (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]))))
       AND NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                        WHERE j.task_id = t.task_id AND j.status IN ('waiting', 'blocked', 'running'))
    RETURNING t.task_id, t.type_key, t.task_key
),
-- their finished jobs go with them (no foreign key does it: migration 0004)
finished_jobs AS (
    DELETE FROM {schema}.jobs AS j USING pruned AS p WHERE j.task_id = p.task_id
)
SELECT p.type_key, p.task_key FROM pruned AS p

-- name: lock_schedules
-- deploy(), before it re-creates the functions and the jobs table's triggers: a worker firing a
-- tick (fire_schedule) locks its schedule's row, then inserts a job, while deploy() locks the jobs
-- table, then writes schedules; in that order they would deadlock. Firing waits for the deploy
-- instead (and a schedule's missed ticks are fired as after any downtime: the latest one).
LOCK TABLE {schema}.schedules IN SHARE ROW EXCLUSIVE MODE

-- name: schedule_refusals
-- $1: the schedules of the tasks this deploy registers, as JSON: [{"type_key", "task_key",
-- "schedules": [{"key", "expression", "timezone", "arguments", "priority"}]}]. Why a schedule's
-- arguments do not fit its task (as insert_job would refuse them), one row each.
SELECT r.value->>'type_key' AS type_key, r.value->>'task_key' AS task_key,
       s.value->>'expression' AS expression, c.refusal[2] AS refusal
  FROM pg_catalog.jsonb_array_elements($1::text::jsonb) AS r
  JOIN {schema}.tasks AS t ON t.type_key = r.value->>'type_key' AND t.task_key = r.value->>'task_key'
 CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(r.value->'schedules') AS s
 CROSS JOIN LATERAL {schema}._canonical_or_refusal(t, s.value->'arguments', true) AS c
 WHERE c.refusal IS NOT NULL

-- name: sync_schedules
-- $1: as schedule_refusals. The registered tasks get exactly these schedules (the last deploy
-- wins): a schedule whose key a task no longer has is removed, a new key is a new schedule, which
-- starts at its next tick; one that stays keeps its last tick. The workers are told (NOTIFY) when
-- anything changed.
WITH
-- the registered tasks
registered AS (
    SELECT t.task_id, r.value->'schedules' AS schedules
      FROM pg_catalog.jsonb_array_elements($1::text::jsonb) AS r
      JOIN {schema}.tasks AS t ON t.type_key = r.value->>'type_key' AND t.task_key = r.value->>'task_key'
),
-- the schedules they are to have
wanted AS (
    SELECT g.task_id, s.value->>'key' AS cron_key, s.value->>'expression' AS expression,
           s.value->>'timezone' AS timezone, s.value->'arguments' AS arguments, (s.value->>'priority')::int AS priority
      FROM registered AS g
     CROSS JOIN LATERAL pg_catalog.jsonb_array_elements(g.schedules) AS s
),
-- the schedules they no longer have (a changed one is a new one)
removed AS (
    DELETE FROM {schema}.schedules AS s USING registered AS g
     WHERE s.task_id = g.task_id
       AND NOT EXISTS (SELECT 1 FROM wanted AS w WHERE w.task_id = s.task_id AND w.cron_key = s.cron_key)
    RETURNING s.schedule_id
),
-- the new ones
added AS (
    INSERT INTO {schema}.schedules (task_id, cron_key, expression, timezone, arguments, priority)
    SELECT w.task_id, w.cron_key, w.expression, w.timezone, w.arguments, w.priority FROM wanted AS w
    ON CONFLICT (task_id, cron_key) DO NOTHING
    RETURNING schedule_id
)
SELECT pg_catalog.pg_notify({channel}, 'schedules')
 WHERE EXISTS (SELECT 1 FROM removed) OR EXISTS (SELECT 1 FROM added)

-- name: load_schedules
-- The schedules of the tasks $1 (a scheduler's), with the server's clock
SELECT s.schedule_id, t.type_key, t.task_key, s.expression, s.timezone, s.arguments, s.priority,
       s.created_at, s.last_tick, pg_catalog.clock_timestamp() AS now
  FROM {schema}.schedules AS s JOIN {schema}.tasks AS t ON t.task_id = s.task_id
 WHERE s.task_id = ANY ($1::int[])
 ORDER BY s.schedule_id

-- name: fire_schedule
SELECT {schema}.fire_schedule($1, $2)

-- name: list_schedules
SELECT t.type_key, t.task_key, s.expression, s.timezone, s.arguments, s.priority, s.created_at,
       s.last_tick, s.last_job_id, j.status AS last_job_status
  FROM {schema}.schedules AS s
  JOIN {schema}.tasks AS t ON t.task_id = s.task_id
  LEFT JOIN {schema}.jobs AS j ON j.job_id = s.last_job_id
 ORDER BY t.type_key, t.task_key, s.schedule_id

-- name: drop_schema
DROP SCHEMA IF EXISTS {schema} CASCADE

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema}

-- name: create_version_table
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version     int PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
)

-- name: current_version
SELECT coalesce(pg_catalog.max(version), 0) FROM {schema}.schema_version

-- name: record_migration
INSERT INTO {schema}.schema_version (version, name) VALUES ($1, $2)

-- name: active_counts
SELECT waiting, blocked, running FROM {schema}.active_counts()

-- name: status_counts
SELECT status, count FROM {schema}.status_counts()

-- name: prune_jobs
SELECT {schema}.prune_jobs($1::interval, $2)

-- name: prune_jobs_if_free
-- The worker's background pruning: one batch, unless another worker prunes this schema now
-- (NULL then). The advisory lock ($1, per schema) is the transaction's: the batch is.
SELECT CASE WHEN pg_catalog.pg_try_advisory_xact_lock($1) THEN {schema}.prune_jobs(NULL, $2) END

-- name: count_prunable_jobs
SELECT {schema}.count_prunable_jobs($1::interval)
