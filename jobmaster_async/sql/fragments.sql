-- Fragments: the rules the hot path states in more than one statement, each written once here.
-- A block "-- fragment: name" runs to the next block; {fragment:name} in queries.sql or a
-- functions/ file is replaced by it when the catalogue loads (db/sql.py), as {schema} is, so a
-- fragment costs nothing when it runs. A block's comment lines are dropped; it may use the
-- other placeholders and the fragments above it. Migrations use none: they are frozen.
-- Each fragment says what it expects of the statement it stands in (aliases, names, columns).


-- fragment: unless_active_twin
-- Dedupe: a job identical to one that is waiting, blocked or running (same task, same canonical
-- arguments) is not inserted. The conflict target and its WHERE must name the partial unique
-- index jobs_dedupe_idx exactly (its predicate, word for word). Ends an INSERT INTO jobs.
ON CONFLICT (task_id, args_hash) WHERE status IN ('waiting', 'blocked', 'running') DO NOTHING

-- fragment: insert_waiting
-- Inserting jobs of a task without dependencies (nor "ALL"): each row of `waiting_jobs`
-- (task_id, priority, arguments: canonical, args_hash: md5 of their text, is_dependency and
-- retries: the task's, run_at: the requested time or NULL, trace_context: the inserter's or
-- NULL) becomes a waiting job, unless an
-- identical job is active or an earlier row is identical; returns job_id and args_hash of the
-- jobs inserted. A job asked for a future time is scheduled: it may run from then, and is out
-- of the claim indexes until promoted (functions/claim.sql promote_due_jobs). queries.sql
-- insert_job_fast and _insert_waiting (functions/insert.sql) are its two users.
INSERT INTO {schema}.jobs AS j (task_id, priority, arguments, args_hash, status, is_dependency, max_attempts,
                                run_at, run_after, scheduled, trace_context)
SELECT w.task_id, w.priority, w.arguments, w.args_hash, 'waiting', w.is_dependency, w.retries + 1,
       w.run_at, greatest(pg_catalog.now(), w.run_at), coalesce(w.run_at > pg_catalog.now(), false),
       w.trace_context
  FROM waiting_jobs AS w
{fragment:unless_active_twin}
RETURNING j.job_id, j.args_hash

-- fragment: claim
-- The claim: the jobs of `to_claim` (job_id, worker_id), which the statement has locked, run for
-- that worker; attempts counts the start (it never decreases: fencing relies on it). Returns
-- what claim_jobs() returns (trace_context: the worker's span of the run is a child of it). queries.sql claim_jobs_fast and both ways of claim_jobs() use it.
UPDATE {schema}.jobs AS j
   SET status = 'running', worker_id = c.worker_id, attempts = j.attempts + 1,
       started_at = pg_catalog.now(), message = NULL
  FROM to_claim AS c
 WHERE j.job_id = c.job_id
RETURNING j.job_id, j.task_id, j.priority, j.arguments, j.attempts, j.max_attempts, j.trace_context

-- fragment: claim_settings
-- The planner settings of every claim, as SET clauses of claim_jobs(); the claimer's connection,
-- which runs claim_jobs_fast, takes the same as its session settings
-- (Catalogue.claim_session_settings): this is their one source. A queue table's statistics are
-- always stale: with sorts allowed, a plan that reads every waiting job and sorts them looks
-- cheaper than walking the claim index in order, and is far slower. Before PostgreSQL 18 a
-- disabled plan node is given a huge cost, which would make JIT compile every claim: hence
-- jit off. Bitmap scans are off because they never mark the index entries of finished jobs
-- dead: until vacuum, every count of a task's running jobs would visit the table for each
-- finished job of the task (migration 0006). Incremental sorts are off with sorts: a probe of the
-- suspects must go along jobs_suspects_idx, in an order no other index gives in full (migration 0016).
SET enable_sort = off SET enable_incremental_sort = off SET jit = off SET enable_bitmapscan = off

-- fragment: runs_no_suspect
-- Does worker p_worker run no suspect (suspects run one per worker: DESIGN 9 "Lost workers")? In
-- claim_jobs(). Along jobs_suspects_idx: its order, which no other index gives, makes it so
-- (sorts are off; why: migration 0016); jobs_running_idx would read every running job.
(SELECT s.job_id FROM {schema}.jobs AS s
  WHERE s.status = 'running' AND s.suspect_of IS NOT NULL AND s.worker_id = p_worker
  ORDER BY s.status, s.priority DESC, s.seq, s.suspect_of
  LIMIT 1) IS NULL

-- fragment: claim_commit
-- A claim need not wait for its WAL flush: lost in a crash, it only puts the job back to
-- waiting, as a crash does anyway (outcomes are still committed durably). But with synchronous
-- standbys (synchronous_standby_names set), a claim the standby has not received is lost by a
-- failover while its job runs, and runs again after it: the claim then waits for the standby to
-- have written it (remote_write: enough for a promotion, cheaper than on's flush there), or
-- keeps a weaker setting of the server's or the session's (local, off: their choice). Two
-- current_setting reads: no cost worth measuring beside the claim. For the claim's transaction
-- only; an expression.
pg_catalog.set_config('synchronous_commit',
    CASE WHEN pg_catalog.current_setting('synchronous_standby_names') = '' THEN 'off'
         WHEN pg_catalog.current_setting('synchronous_commit') IN ('on', 'remote_apply') THEN 'remote_write'
         ELSE pg_catalog.current_setting('synchronous_commit') END,
    true)

-- fragment: held
-- Fencing: the rows of jobs AS j among p_ids (uuid[]) that worker p_worker still holds in the
-- attempt p_attempts (int[], by position) gives; the late outcome of a rescued job touches
-- nothing. Found by primary key (job_id = ANY) and positioned by array_position, not by a join
-- with unnest, and "held by this worker" is written with IS NOT DISTINCT FROM, which no index
-- serves (the same meaning here: both columns are set on these rows): with "=", a queue's ever
-- stale statistics ("this worker runs 1 job") made the planner walk all of the worker's running
-- jobs and test each against the batch, quadratic once outcomes queue up; with a join, it picks
-- a nested loop over the batch. The dispatcher bounds a batch (RECORD_BATCH).
j.job_id = ANY (p_ids)
   AND j.status IS NOT DISTINCT FROM 'running' AND j.worker_id IS NOT DISTINCT FROM p_worker
   AND j.attempts = p_attempts[pg_catalog.array_position(p_ids, j.job_id)]

-- fragment: own_history
-- Said by a statement that writes its own history rows, in an expression it evaluates before it
-- writes (the contract: functions/triggers.sql).
pg_catalog.set_config('jobmaster.history_written', 'on', true)

-- fragment: history_by_triggers
-- Said first by every entry point (whatever a caller set, the triggers write the history of what
-- the function does), and after a statement that wrote its own history when the transaction goes
-- on (complete_jobs): the triggers write the history of what follows. A call in the body, not a
-- SET clause on the function: CREATE FUNCTION ... SET of a custom setting needs a privilege on
-- the parameter that the schema's owner does not have (PostgreSQL 15+).
pg_catalog.set_config('jobmaster.history_written', 'off', true)

-- fragment: history_written
-- Asked by the history triggers: did the statement write its own history rows?
pg_catalog.current_setting('jobmaster.history_written', true) = 'on'
