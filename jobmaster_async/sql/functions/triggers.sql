-- Triggers: the history of every status change, NOTIFY when jobs become runnable, and links
-- checked at commit.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.
--
-- WHO WRITES THE HISTORY (the one contract; DESIGN 9.1 "Counting starts")
-- Every status change of a job is one job_events row saying why (reason), and a statement that
-- makes jobs runnable, or ends a running job of a process_limit task, wakes the workers (NOTIFY).
-- The transition functions (and the library's plain statements that do their work) write both
-- themselves, set-based, with the reason they are given: the claim (queries.sql claim_jobs_fast,
-- claim_jobs()), complete_jobs, fail_jobs (retried or failed: the worker decides, lifecycle.py),
-- release_jobs, rescue_jobs (rescued or failed: decided here in SQL from the stored task row),
-- cancel_job, retry_job (requeued), the settling of dependents (dependencies.sql _settle:
-- unblocked, failed, completed) and the plain insert (queries.sql insert_job_fast). Each sets
-- jobs.reason to the reason of the history row it writes (fragment history).
-- The statement-level triggers jobs_inserted and jobs_updated below write them for the rest:
-- the jobs inserted without their history row (the library's other inserts, a client's plain
-- INSERT: whatever it wrote in jobs.reason), and a status change that leaves jobs.reason as it
-- was (a client's plain UPDATE; the library writes none). A transition always changes
-- jobs.reason (no status is entered twice in a row by the same reason), and the trigger sets it
-- back to NULL on the rows it wrote the history of (a rare path: plain SQL), so "reason
-- unchanged" means "written by plain SQL" for every row.
-- Why a column and not a setting, nor a look-up, for status changes: no setting, which any client
-- can change, decides what is recorded; a role without rights on the tables (the web role,
-- granted add_job) cannot write the column; a role that may update jobs can already write
-- anything, history included. The test costs the trigger one join of its transition tables, no
-- index probe per row (benchmarks/README.md, "Hot-path statements write their own history").
-- Inserts are told by a look-up of their history row instead (a new job has no other), so that a
-- role allowed to insert jobs, and no more, cannot skip their history by setting the column.
-- A statement that is to write its own history sets jobs.reason as the transitions do, or leaves
-- it to triggers.


-- Where a history event comes from: the worker's node and pid, else the client's. (A set-returning
-- SQL function, so the planner inlines it into the statements that join it.)
CREATE OR REPLACE FUNCTION {schema}._event_origin(p_worker uuid)
RETURNS TABLE (node text, pid int) LANGUAGE sql STABLE AS $$
    -- inlined into plain statements too: built-ins qualified
    SELECT coalesce(w.node, pg_catalog.host(pg_catalog.inet_client_addr()), 'local'),
           coalesce(w.pid, pg_catalog.pg_backend_pid())
      FROM (SELECT 1) AS one
      LEFT JOIN {schema}.workers AS w ON w.worker_id = p_worker
$$;


-- History and NOTIFY of inserted jobs, but for those whose history row the inserting statement
-- wrote itself (queries.sql insert_job_fast; the contract above). Told by that row, not by
-- jobs.reason, which a role allowed to insert jobs could set: no insert skips its history. (An
-- anti-join on job_events_job_idx: a probe per inserted job.)
CREATE OR REPLACE FUNCTION {schema}._jobs_inserted()
RETURNS trigger LANGUAGE plpgsql {search_path} AS $$
DECLARE
    v_wake    boolean;
    v_reasons uuid[];
BEGIN
    WITH
    -- the jobs inserted without their history row
    unrecorded AS (
        SELECT n.job_id, n.status, n.message, n.reason FROM new_jobs AS n
         WHERE NOT EXISTS (SELECT 1 FROM {schema}.job_events AS e WHERE e.job_id = n.job_id)
    ),
    -- their history rows
    logged AS (
        INSERT INTO {schema}.job_events (job_id, status, reason, node, pid, message)
        SELECT u.job_id, u.status, 'inserted', w.node, w.pid, u.message
          FROM unrecorded AS u, {schema}._event_origin(NULL) AS w
    )
    SELECT coalesce(bool_or(u.status = 'waiting'), false),
           array_agg(u.job_id) FILTER (WHERE u.reason IS NOT NULL)
      INTO v_wake, v_reasons
      FROM unrecorded AS u;
    IF v_reasons IS NOT NULL THEN
        -- a plain INSERT that wrote a reason: cleared, so that the next transition changes it (a
        -- reason equal to the next transition's would make it look like plain SQL, recorded twice)
        UPDATE {schema}.jobs SET reason = NULL WHERE job_id = ANY (v_reasons);
    END IF;
    IF v_wake THEN
        PERFORM pg_notify({channel}, 'wake');
    END IF;
    RETURN NULL;
END $$;


-- History and NOTIFY of the status changes written by plain SQL: those that left jobs.reason as
-- it was (the contract above).
CREATE OR REPLACE FUNCTION {schema}._jobs_updated()
RETURNS trigger LANGUAGE plpgsql {search_path} AS $$
DECLARE
    v_wake      boolean;
    v_plain     uuid[];
    v_cancelled uuid[];
    v_job_id    uuid;
BEGIN
    WITH
    -- rows whose status changed in this statement by plain SQL, and why (as plain SQL says it:
    -- from the statuses)
    changes AS (
        SELECT n.job_id, n.task_id, n.status, o.status AS old_status,
               coalesce(n.worker_id, o.worker_id) AS worker_id, n.message, n.reason AS kept,
               CASE WHEN n.status = 'running' THEN 'claimed'
                    WHEN n.status = 'complete' THEN 'completed'
                    WHEN n.status = 'cancelled' THEN 'cancelled'
                    WHEN n.status = 'failed' THEN 'failed'
                    WHEN o.status = 'running' THEN 'retried'
                    WHEN o.status = 'blocked' THEN 'unblocked'
                    WHEN o.status IN ('failed', 'cancelled') THEN 'requeued'
                    ELSE n.status END AS reason
          FROM new_jobs AS n JOIN old_jobs AS o ON o.job_id = n.job_id
         WHERE n.status <> o.status AND n.reason IS NOT DISTINCT FROM o.reason
    ),
    -- each change in the history, with the worker's node and pid (else the client's)
    logged AS (
        INSERT INTO {schema}.job_events (job_id, status, reason, worker_id, node, pid, message)
        SELECT c.job_id, c.status, c.reason, c.worker_id, w.node, w.pid, c.message
          FROM changes AS c
         CROSS JOIN LATERAL {schema}._event_origin(c.worker_id) AS w
    )
    -- wake workers when jobs became runnable, or a running job of a process_limit task ended
    -- (a slot freed); tell the workers of cancelled running jobs
    SELECT coalesce(bool_or(c.status = 'waiting' OR t.process_limit IS NOT NULL), false),
           array_agg(c.job_id) FILTER (WHERE c.kept IS NOT NULL),
           array_agg(c.job_id) FILTER (WHERE c.old_status = 'running' AND c.status = 'cancelled')
      INTO v_wake, v_plain, v_cancelled
      FROM changes AS c
      LEFT JOIN {schema}.tasks AS t ON c.old_status = 'running' AND t.task_id = c.task_id;
    IF v_plain IS NOT NULL THEN
        -- their status was written by plain SQL: reason NULL says so, so that the next transition
        -- changes it (this statement changes no status: the trigger it fires writes nothing)
        UPDATE {schema}.jobs SET reason = NULL WHERE job_id = ANY (v_plain);
    END IF;
    IF v_wake THEN
        PERFORM pg_notify({channel}, 'wake');
    END IF;
    FOREACH v_job_id IN ARRAY coalesce(v_cancelled, '{}') LOOP
        PERFORM pg_notify({channel}, 'cancel:' || v_job_id);
    END LOOP;
    RETURN NULL;
END $$;


DROP TRIGGER IF EXISTS jobs_inserted ON {schema}.jobs;
CREATE TRIGGER jobs_inserted AFTER INSERT ON {schema}.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}._jobs_inserted();

DROP TRIGGER IF EXISTS jobs_updated ON {schema}.jobs;
CREATE TRIGGER jobs_updated AFTER UPDATE ON {schema}.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}._jobs_updated();


-- The check at commit of a link to a job that existed before the linking transaction (queued by
-- the deferred constraint trigger job_dependencies_check_at_commit). Linking locks nothing, so a
-- worker never waits on a client's open transaction; the dependency may have finished since the
-- plan saw it pending. Here, at commit, it is locked (workers then wait for this commit alone,
-- and their settling afterwards sees the link), given the dependent's priority + 1 if it is
-- still waiting or blocked, and if it finished already, the dependent is settled now.
-- It runs at COMMIT, after add_job returned: in the client's role and with the client's
-- settings. So it is SECURITY DEFINER (before PostgreSQL 18 a deferred trigger runs as the role
-- current at commit: the insert-only web role, which may not touch jobs) and an {entry_point}.
CREATE OR REPLACE FUNCTION {schema}._check_link()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER {entry_point} AS $$
DECLARE
    v_status text;
BEGIN
    SELECT j.status INTO v_status FROM {schema}.jobs AS j WHERE j.job_id = NEW.depends_on FOR NO KEY UPDATE;
    IF v_status IN ('waiting', 'blocked') THEN
        UPDATE {schema}.jobs AS j
           SET priority = least(d.priority::bigint + 1, 2147483647)::int
          FROM {schema}.jobs AS d
         WHERE j.job_id = NEW.depends_on AND d.job_id = NEW.job_id
           AND j.priority < least(d.priority::bigint + 1, 2147483647);
    ELSIF v_status IN ('complete', 'failed', 'cancelled') THEN
        PERFORM {schema}._settle(ARRAY[NEW.depends_on]);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS job_dependencies_check_at_commit ON {schema}.job_dependencies;
CREATE CONSTRAINT TRIGGER job_dependencies_check_at_commit AFTER INSERT ON {schema}.job_dependencies
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.check_at_commit) EXECUTE FUNCTION {schema}._check_link();
