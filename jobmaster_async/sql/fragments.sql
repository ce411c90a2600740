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
-- (task_id, priority, arguments: canonical, args_hash: md5 of their text, is_dependency: the
-- task's, run_at: the requested time or NULL, trace_context: the inserter's or NULL, reason:
-- 'inserted' when the statement writes the history rows itself, else NULL; the jobs_inserted
-- trigger writes those of the jobs whose row it finds missing) becomes a waiting job, unless an
-- identical job is active or an earlier row is identical; returns job_id and args_hash of the
-- jobs inserted. A job asked for a future time is scheduled: it may run from then, and is out
-- of the claim indexes until promoted (functions/claim.sql promote_due_jobs). queries.sql
-- insert_job_fast and _insert_waiting (functions/insert.sql) are its two users.
INSERT INTO {schema}.jobs AS j (task_id, priority, arguments, args_hash, status, is_dependency,
                                run_at, run_after, scheduled, trace_context, reason)
SELECT w.task_id, w.priority, w.arguments, w.args_hash, 'waiting', w.is_dependency,
       w.run_at, greatest(pg_catalog.now(), w.run_at), coalesce(w.run_at > pg_catalog.now(), false),
       w.trace_context, w.reason
  FROM waiting_jobs AS w
{fragment:unless_active_twin}
RETURNING j.job_id, j.args_hash

-- fragment: claimable
-- A job of jobs AS j that a claim may take now: waiting, not scheduled (in the claim indexes:
-- their predicate), due. Every claim and every "is one claimable?" says it with this.
j.status = 'waiting' AND NOT j.scheduled AND j.run_after <= pg_catalog.now()

-- fragment: limits_apply
-- Is this claim the slow kind: must it respect a process_limit, or could its jobs exceed its
-- units budget? Asked of the claim's request, a row `r` (task_ids int[], lim int: how many jobs,
-- units int: the free process units). Then claim_jobs() takes the way that respects them;
-- queries.sql claim_jobs_fast claims nothing and says so.
EXISTS (SELECT 1 FROM {schema}.tasks AS t
         WHERE t.task_id = ANY (r.task_ids)
           AND (t.process_limit IS NOT NULL OR t.process_units * r.lim > r.units))

-- fragment: claim
-- The claim: the jobs of `to_claim` (job_id, worker_id), which the statement has locked, run for
-- that worker; attempts counts the start (it never decreases: fencing relies on it), and so do
-- tries (the starts that count against the task's retries: lifecycle.py). Returns what
-- claim_jobs() returns (trace_context: the worker's span of the run is a child of it), and the
-- columns of the history (fragment history), which the statement writes itself.
-- queries.sql claim_jobs_fast and both ways of claim_jobs() use it.
UPDATE {schema}.jobs AS j
   SET status = 'running', worker_id = c.worker_id, attempts = j.attempts + 1, tries = j.tries + 1,
       started_at = pg_catalog.now(), message = NULL, reason = 'claimed'
  FROM to_claim AS c
 WHERE j.job_id = c.job_id
RETURNING j.job_id, j.task_id, j.priority, j.arguments, j.attempts, j.tries, j.trace_context,
          j.status, j.reason, j.worker_id, j.message

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

-- fragment: history
-- The history of a transition (the contract: functions/triggers.sql): a job_events row for each
-- row of `changed` (job_id, status, reason, worker_id, message: a transition function's UPDATE
-- ... RETURNING, which set jobs.reason to the same reason), with the worker's node and pid (else
-- the client's). The body of a CTE.
INSERT INTO {schema}.job_events (job_id, status, reason, worker_id, node, pid, message)
SELECT c.job_id, c.status, c.reason, c.worker_id, w.node, w.pid, c.message
  FROM changed AS c
 CROSS JOIN LATERAL {schema}._event_origin(c.worker_id) AS w
