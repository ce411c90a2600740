-- Inserting jobs: the internal helpers, the SQL interface (insert_job, add_job) and insert_jobs.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


-- Traces (DESIGN 9.1 "Traces"): the W3C trace context a job is inserted in, as jobs.trace_context
-- stores it: {"traceparent": ..., "tracestate": ...}, or NULL. Untrusted (any SQL client may pass
-- one): a traceparent that is not of the W3C form (version 00: "00-" 32 lowercase hex digits, not
-- all zero, "-" 16 such, "-" 2 more) gives NULL, the job then runs in a trace of its own; a
-- tracestate that is not printable ASCII of at most 512 characters is left out. Never an error:
-- a trigger calling add_job must not fail its caller's transaction over a header. (Inlined into
-- the plain insert statement, which runs with the caller's search_path: built-ins are qualified.)
CREATE OR REPLACE FUNCTION {schema}._trace_context(p_traceparent text, p_tracestate text)
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_traceparent OPERATOR(pg_catalog.~) '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
                 AND pg_catalog.substr(p_traceparent, 1, 2) OPERATOR(pg_catalog.<>) 'ff'
                 AND pg_catalog.substr(p_traceparent, 4, 32) OPERATOR(pg_catalog.<>) '00000000000000000000000000000000'
                 AND pg_catalog.substr(p_traceparent, 37, 16) OPERATOR(pg_catalog.<>) '0000000000000000'
           -- jsonb_object(text[]), not jsonb_build_object: that one is only stable, and an immutable
           -- function calling it is not inlined (then each call plans its body again)
           THEN pg_catalog.jsonb_object(CASE WHEN p_tracestate OPERATOR(pg_catalog.~) '^[ -~]+$'
                                              AND pg_catalog.length(p_tracestate) OPERATOR(pg_catalog.<=) 512
                                             THEN ARRAY['traceparent', p_traceparent, 'tracestate', p_tracestate]
                                             ELSE ARRAY['traceparent', p_traceparent] END)
      END
$$;


-- The trace context a SQL client set for its transaction (or session): the settings
-- jobmaster.traceparent and jobmaster.tracestate, the W3C headers' values, checked as above. The
-- SQL interface (insert_job, add_job, insert_jobs) stores it with the jobs it inserts.
CREATE OR REPLACE FUNCTION {schema}._trace_context_setting()
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT {schema}._trace_context(current_setting('jobmaster.traceparent', true),
                                   current_setting('jobmaster.tracestate', true))
$$;


-- The task of that name; refused (unknown_task) when there is none.
CREATE OR REPLACE FUNCTION {schema}._task(p_type_key text, p_task_key text)
RETURNS {schema}.tasks LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_task {schema}.tasks;
BEGIN
    SELECT * INTO v_task FROM {schema}.tasks WHERE type_key = p_type_key AND task_key = p_task_key;
    IF NOT FOUND THEN
        PERFORM {schema}._refuse('unknown_task',
            format('unknown task %s.%s (is it deployed?)', p_type_key, p_task_key));
    END IF;
    RETURN v_task;
END $$;


-- The identical job (same task, same canonical arguments) that is waiting, blocked or running.
CREATE OR REPLACE FUNCTION {schema}._active_twin(p_task_id int, p_args_hash uuid)
RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT job_id FROM {schema}.jobs
     WHERE task_id = p_task_id AND args_hash = p_args_hash
       AND status IN ('waiting', 'blocked', 'running')
$$;


-- Dedupe and time (DESIGN 9 "Scheduled jobs"): an insert that found active twins (p_ids) and
-- asks for p_run_at (NULL: now) moves those of them earlier that are waiting or blocked and
-- whose requested time is still ahead and later than that. Their priority never changes. A
-- waiting one may run at the new time (at once if it has passed): the workers are woken, to
-- claim it or to set their timers by it. (The row stays locked until the inserting transaction
-- commits: keep a transaction that moves jobs earlier short.)
CREATE OR REPLACE FUNCTION {schema}._move_earlier(p_ids uuid[], p_run_at timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- the common case, cheaply (an UPDATE of nothing would still run the history trigger)
    IF NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                    WHERE j.job_id = ANY (p_ids) AND j.status IN ('waiting', 'blocked')
                      AND j.run_at > now() AND coalesce(p_run_at, now()) < j.run_at) THEN
        RETURN;
    END IF;
    UPDATE {schema}.jobs AS j
       SET run_at = p_run_at, run_after = greatest(now(), p_run_at),
           scheduled = j.status = 'waiting' AND coalesce(p_run_at > now(), false)
     WHERE j.job_id = ANY (p_ids) AND j.status IN ('waiting', 'blocked')
       AND j.run_at > now() AND coalesce(p_run_at, now()) < j.run_at;
    PERFORM pg_notify({channel}, 'wake');
END $$;


-- Inserts a batch of jobs of a task that has dependencies (canonical arguments), resolving the
-- dependencies of all of them together: one id per element, in order. A job whose dependency
-- cannot be created is inserted failed, and nothing is created for it. p_run_at: the requested
-- time (NULL: none); a job waits for it and for its dependencies (which are created to run at
-- once); its freshness window is judged now, at insert. p_trace_context: the inserter's
-- (_trace_context), which the jobs and the dependencies created for them are stored with.
CREATE OR REPLACE FUNCTION {schema}._insert_batch(
    p_task {schema}.tasks, p_priority int, p_arguments jsonb[], p_run_at timestamptz, p_trace_context jsonb)
RETURNS uuid[] LANGUAGE plpgsql AS $$
DECLARE
    v_plan     {schema}.plan_step[] := {schema}._plan_dependencies(p_task, p_priority, p_arguments);
    v_ids      uuid[];
    v_blocked  uuid[];
    v_inserted uuid[];
    v_twins    uuid[];
    v_i        int;
BEGIN
    WITH
    -- each requested job's twin, or the status to insert it with
    verdicts AS (
        SELECT * FROM {schema}._plan_verdicts(v_plan)
    ),
    -- the requested jobs that have no active twin, once each
    inserted AS (
        INSERT INTO {schema}.jobs AS j (task_id, priority, arguments, args_hash, status,
                                        is_dependency, message, finished_at,
                                        run_at, run_after, scheduled, trace_context)
        SELECT DISTINCT ON (v.args_hash) p_task.task_id, p_priority, p_arguments[v.root],
               v.args_hash, v.status, p_task.is_dependency, v.failure,
               CASE WHEN v.status = 'failed' THEN now() END,
               p_run_at, greatest(now(), p_run_at), v.status = 'waiting' AND coalesce(p_run_at > now(), false),
               p_trace_context
          FROM verdicts AS v
         WHERE v.twin IS NULL
         ORDER BY v.args_hash, v.root
        {fragment:unless_active_twin}
        RETURNING j.job_id, j.args_hash, j.status
    )
    SELECT array_agg(coalesce(v.twin, i.job_id) ORDER BY v.root),
           array_agg(CASE WHEN i.status = 'blocked' THEN i.job_id END ORDER BY v.root),
           array_agg(i.job_id) FILTER (WHERE i.job_id IS NOT NULL)
      INTO v_ids, v_blocked, v_inserted
      FROM verdicts AS v
      LEFT JOIN inserted AS i ON i.args_hash = v.args_hash;

    IF EXISTS (SELECT 1 FROM unnest(v_blocked) AS b WHERE b IS NOT NULL) THEN
        PERFORM {schema}._carry_out_plan(v_plan, v_blocked, p_trace_context);
    END IF;

    -- an identical job inserted by a concurrent transaction is not in our snapshot: ask again
    FOR v_i IN SELECT i FROM generate_subscripts(v_ids, 1) AS i WHERE v_ids[i] IS NULL LOOP
        v_ids[v_i] := coalesce({schema}._active_twin(p_task.task_id, md5(p_arguments[v_i]::text)::uuid),
                               ({schema}._insert_batch(p_task, p_priority, ARRAY[p_arguments[v_i]], p_run_at,
                                                       p_trace_context))[1]);
    END LOOP;
    -- the twins found (ids this call did not insert) may have to run earlier
    v_twins := ARRAY(SELECT unnest(v_ids) EXCEPT SELECT unnest(v_inserted));
    IF cardinality(v_twins) > 0 THEN
        PERFORM {schema}._move_earlier(v_twins, p_run_at);
    END IF;
    RETURN v_ids;
END $$;


-- Inserts jobs of a task without dependencies (canonical arguments, no "ALL"), to run at p_run_at
-- (NULL: now): one id per element, in order; an element identical to an active job, or to an
-- earlier element, gets that job's id (and may move it earlier: _move_earlier). The one way such
-- jobs are inserted but for queries.sql insert_job_fast, which states the same rule (fragment
-- insert_waiting) in a plain statement. p_trace_context: the inserter's (_trace_context).
CREATE OR REPLACE FUNCTION {schema}._insert_waiting(
    p_task {schema}.tasks, p_priority int, p_arguments jsonb[], p_run_at timestamptz, p_trace_context jsonb)
RETURNS uuid[] LANGUAGE plpgsql AS $$
DECLARE
    v_ids      uuid[];
    v_inserted uuid[];
    v_i        int;
BEGIN
    WITH
    -- the elements, numbered and hashed
    batch AS (
        SELECT u.ord, u.args, md5(u.args::text)::uuid AS args_hash
          FROM unnest(p_arguments) WITH ORDINALITY AS u(args, ord)
    ),
    -- the jobs to insert, as the fragment takes them
    waiting_jobs AS (
        SELECT p_task.task_id, p_priority AS priority, b.args AS arguments, b.args_hash,
               p_task.is_dependency, p_run_at AS run_at, p_trace_context AS trace_context,
               NULL::text AS reason  -- the jobs_inserted trigger writes the history
          FROM batch AS b
    ),
    -- the jobs; an element identical to an active job, or to an earlier element, is skipped
    inserted AS (
        {fragment:insert_waiting}
    )
    SELECT array_agg(i.job_id ORDER BY b.ord) INTO v_ids
      FROM batch AS b
      LEFT JOIN inserted AS i ON i.args_hash = b.args_hash;

    IF array_position(v_ids, NULL) IS NOT NULL THEN
        v_inserted := v_ids;
        -- skipped elements: the ids of their identical active jobs (this statement also sees those
        -- committed meanwhile by other transactions)
        SELECT array_agg(coalesce(v_ids[b.ord], {schema}._active_twin(p_task.task_id, md5(b.args::text)::uuid))
                         ORDER BY b.ord)
          INTO v_ids
          FROM unnest(p_arguments) WITH ORDINALITY AS b(args, ord);
        -- rare: an identical job that finished meanwhile; insert again, one by one
        FOR v_i IN SELECT i FROM generate_subscripts(v_ids, 1) AS i WHERE v_ids[i] IS NULL LOOP
            v_ids[v_i] := ({schema}._insert_waiting(p_task, p_priority, ARRAY[p_arguments[v_i]], p_run_at,
                                                    p_trace_context))[1];
        END LOOP;
        -- the twins may have to run earlier
        PERFORM {schema}._move_earlier(ARRAY(SELECT unnest(v_ids) EXCEPT SELECT unnest(v_inserted)), p_run_at);
    END IF;
    RETURN coalesce(v_ids, '{}');
END $$;


-- Inserts one job to run at p_run_at (NULL: now; refused outside _run_at_ok's range), or hands
-- back an identical active one (moved earlier if it asks for a later time), resolving its
-- dependencies. Its refusals are raised here, one call below insert_job and add_job, so that psql
-- shows them with two CONTEXT lines at most.
-- p_trace_context: the inserter's (_trace_context), stored with the job and with the jobs
-- created for it (dependencies, "ALL" children); a twin keeps its own.
CREATE OR REPLACE FUNCTION {schema}._insert_job(
    p_type_key text, p_task_key text, p_priority int, p_arguments jsonb, p_run_at timestamptz DEFAULT NULL,
    p_trace_context jsonb DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_task    {schema}.tasks;
    v_checked record;
    v_args    jsonb;
BEGIN
    SELECT * INTO v_task FROM {schema}.tasks WHERE type_key = p_type_key AND task_key = p_task_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'JM400', DETAIL = 'unknown_task',
            MESSAGE = format('unknown task %s.%s (is it deployed?)', p_type_key, p_task_key);
    END IF;
    IF NOT {schema}._run_at_ok(p_run_at) THEN
        RAISE EXCEPTION USING ERRCODE = 'JM400', DETAIL = 'invalid_run_at',
            MESSAGE = {schema}._run_at_refusal(p_type_key || '.' || p_task_key, p_run_at);
    END IF;
    v_checked := {schema}._canonical_or_refusal(v_task, p_arguments, true);
    IF v_checked.refusal IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'JM400', MESSAGE = v_checked.refusal[2], DETAIL = v_checked.refusal[1];
    END IF;
    v_args := v_checked.arguments;
    IF cardinality(v_task.write_all) > 0 THEN
        IF EXISTS (SELECT 1 FROM unnest(v_task.write_all) AS p WHERE v_args->p = '"ALL"') THEN
            RETURN {schema}._fan_out(v_task, coalesce(p_priority, 0), v_args, p_run_at, p_trace_context);
        END IF;
    END IF;
    IF jsonb_array_length(v_task.dependencies) > 0 THEN
        RETURN ({schema}._insert_batch(v_task, coalesce(p_priority, 0), ARRAY[v_args], p_run_at,
                                       p_trace_context))[1];
    END IF;
    RETURN ({schema}._insert_waiting(v_task, coalesce(p_priority, 0), ARRAY[v_args], p_run_at,
                                     p_trace_context))[1];
END $$;


-- "ALL" for write_all parameters: a parent job blocked on one child per option (the cartesian
-- product over several such parameters), the children inserted as one batch, to run at p_run_at
-- (NULL: now), which the parent records too, as it does the trace context p_trace_context. The
-- parent completes when all children complete.
CREATE OR REPLACE FUNCTION {schema}._fan_out(
    p_task {schema}.tasks, p_priority int, p_arguments jsonb, p_run_at timestamptz, p_trace_context jsonb)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    v_hash   uuid := md5(p_arguments::text)::uuid;
    v_parent uuid;
    v_param  text;
    v_combos jsonb[] := ARRAY[p_arguments];
    v_failed uuid;
BEGIN
    LOOP
        INSERT INTO {schema}.jobs AS j (task_id, priority, arguments, args_hash, status, is_parent,
                                        is_dependency, run_at, trace_context)
        VALUES (p_task.task_id, p_priority, p_arguments, v_hash, 'blocked', true,
                p_task.is_dependency, p_run_at, p_trace_context)
        {fragment:unless_active_twin}
        RETURNING j.job_id INTO v_parent;
        EXIT WHEN v_parent IS NOT NULL;
        v_parent := {schema}._active_twin(p_task.task_id, v_hash);
        IF v_parent IS NOT NULL THEN
            -- an earlier time moves the parent and its unfinished children
            PERFORM {schema}._move_earlier(
                ARRAY(SELECT v_parent UNION ALL
                      SELECT d.depends_on FROM {schema}.job_dependencies AS d WHERE d.job_id = v_parent),
                p_run_at);
            RETURN v_parent;
        END IF;
    END LOOP;

    FOREACH v_param IN ARRAY p_task.write_all LOOP
        CONTINUE WHEN p_arguments->v_param IS DISTINCT FROM '"ALL"';
        SELECT array_agg(c || jsonb_build_object(v_param, o.value))
          INTO v_combos
          FROM unnest(v_combos) AS c,
               jsonb_array_elements((SELECT p.value->'options'
                                       FROM jsonb_array_elements(p_task.parameters) AS p
                                      WHERE p.value->>'name' = v_param)) AS o;
    END LOOP;

    -- a child may be an identical job that existed before: checked at commit (_check_link)
    INSERT INTO {schema}.job_dependencies (job_id, depends_on, check_at_commit)
    SELECT DISTINCT v_parent, c, true
      FROM unnest({schema}._insert_jobs(p_task.type_key, p_task.task_key, p_priority, v_combos, p_run_at,
                                        p_trace_context)) AS c
     ORDER BY c
    ON CONFLICT DO NOTHING;

    -- a child inserted as failed (its dependencies could not be created) fails the parent
    SELECT d.depends_on INTO v_failed
      FROM {schema}.job_dependencies AS d JOIN {schema}.jobs AS x ON x.job_id = d.depends_on
     WHERE d.job_id = v_parent AND x.status IN ('failed', 'cancelled')
     LIMIT 1;
    IF v_failed IS NOT NULL THEN
        PERFORM {schema}._settle(ARRAY[v_failed]);
    END IF;
    RETURN v_parent;
END $$;


-- json text cast to jsonb, or the error that refused it. The exception block is a
-- subtransaction: only texts that may hold what jsonb refuses come here (_jsonb_arguments).
CREATE OR REPLACE FUNCTION {schema}._jsonb_or_error(p_arguments json, OUT value jsonb, OUT error text)
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    value := p_arguments::jsonb;
EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
    error := SQLERRM;
END $$;


-- The arguments of the SQL interface as jsonb. json takes what jsonb refuses (\u0000, lone
-- surrogates, numbers beyond numeric's range): refused here, naming the task. Only a text that
-- may hold one of those (an escape of \u0000 or of a surrogate, a long digit string, a long
-- exponent) is cast inside an exception block: a trigger calling add_job for each row of a bulk
-- insert must not open a subtransaction per row.
CREATE OR REPLACE FUNCTION {schema}._jsonb_arguments(p_type_key text, p_task_key text, p_arguments json)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_cast record;
BEGIN
    IF p_arguments::text !~ '\\u(0000|[dD][89a-fA-F])|[0-9]{250}|[eE][+-]?[0-9]{5}' THEN
        RETURN p_arguments::jsonb;
    END IF;
    v_cast := {schema}._jsonb_or_error(p_arguments);
    IF v_cast.error IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'JM400', DETAIL = 'invalid_arguments',
            MESSAGE = format('%s.%s: arguments cannot be stored: %s', p_type_key, p_task_key, v_cast.error);
    END IF;
    RETURN v_cast.value;
END $$;


-- The SQL interface: CALL insert_job(...) hands back the id through INOUT job_id. run_at, after
-- it (CALL insert_job(..., run_at => now() + interval '1 hour')), is when the job is to run
-- (NULL: now), so that the 4- and 5-argument calls keep working. The job's trace context is the
-- one the caller set (jobmaster.traceparent, jobmaster.tracestate: _trace_context_setting).
CREATE OR REPLACE PROCEDURE {schema}.insert_job(
    type_key text, task_key text, priority int, arguments json, INOUT job_id uuid DEFAULT NULL,
    run_at timestamptz DEFAULT NULL)
LANGUAGE plpgsql SECURITY DEFINER {entry_point} AS $$
BEGIN
    job_id := {schema}._insert_job(type_key, task_key, priority,
                                   {schema}._jsonb_arguments(type_key, task_key, arguments), run_at,
                                   {schema}._trace_context_setting());
END $$;


-- The same as a function, for SELECT and for trigger functions.
CREATE OR REPLACE FUNCTION {schema}.add_job(
    type_key text, task_key text, priority int, arguments json, run_at timestamptz DEFAULT NULL)
RETURNS uuid LANGUAGE sql SECURITY DEFINER {entry_point} AS $$
    SELECT {schema}._insert_job(type_key, task_key, priority,
                                {schema}._jsonb_arguments(type_key, task_key, arguments), run_at,
                                {schema}._trace_context_setting());
$$;


-- Bulk insert: one id per element, in order (identical elements share one id); all or nothing.
-- One set-based statement (one trigger run, one NOTIFY); tasks with dependencies resolve them
-- for the whole batch at once. Only elements with "ALL" are inserted one by one. Every job is to
-- run at p_run_at (NULL: now; refused outside _run_at_ok's range), in the trace context
-- p_trace_context (_trace_context). The library calls it by name; the SQL interface is
-- insert_jobs below.
CREATE OR REPLACE FUNCTION {schema}._insert_jobs(
    p_type_key text, p_task_key text, p_priority int, p_arguments jsonb[], p_run_at timestamptz,
    p_trace_context jsonb)
RETURNS uuid[] LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_task      {schema}.tasks;
    v_canonical jsonb[];
    v_ids       uuid[] := '{}';
    v_args      jsonb;
BEGIN
    v_task := {schema}._task(p_type_key, p_task_key);
    IF NOT {schema}._run_at_ok(p_run_at) THEN
        RAISE EXCEPTION USING ERRCODE = 'JM400', DETAIL = 'invalid_run_at',
            MESSAGE = {schema}._run_at_refusal(p_type_key || '.' || p_task_key, p_run_at);
    END IF;
    IF coalesce(cardinality(p_arguments), 0) = 0 THEN
        RETURN '{}';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_arguments) AS a, unnest(v_task.write_all) AS w
                WHERE a->w = '"ALL"') THEN
        FOREACH v_args IN ARRAY p_arguments LOOP
            v_ids := v_ids || {schema}._insert_job(p_type_key, p_task_key, p_priority, v_args, p_run_at,
                                                   p_trace_context);
        END LOOP;
        RETURN v_ids;
    END IF;

    -- every element made canonical in one pass, the fast way where it can (see _fast_canonical);
    -- the first one that does not fit is refused with its precise message
    SELECT array_agg(coalesce({schema}._fast_canonical(v_task, u.a),
                              {schema}._canonical_arguments(v_task, u.a, false)) ORDER BY u.ord)
      INTO v_canonical
      FROM (SELECT coalesce(e.a, '{}') AS a, e.ord
              FROM unnest(p_arguments) WITH ORDINALITY AS e(a, ord)) AS u;
    IF jsonb_array_length(v_task.dependencies) > 0 THEN
        RETURN {schema}._insert_batch(v_task, coalesce(p_priority, 0), v_canonical, p_run_at, p_trace_context);
    END IF;
    RETURN {schema}._insert_waiting(v_task, coalesce(p_priority, 0), v_canonical, p_run_at, p_trace_context);
END $$;


-- Bulk insert, the SQL interface: _insert_jobs, in the trace context the caller set
-- (_trace_context_setting).
CREATE OR REPLACE FUNCTION {schema}.insert_jobs(
    p_type_key text, p_task_key text, p_priority int, p_arguments jsonb[], p_run_at timestamptz DEFAULT NULL)
RETURNS uuid[] LANGUAGE sql {entry_point} AS $$
    SELECT {schema}._insert_jobs(p_type_key, p_task_key, p_priority, p_arguments, p_run_at,
                                 {schema}._trace_context_setting());
$$;
