-- Functions, triggers and views. Re-created by every deploy(), after the migrations.
-- Placeholders: {schema} is the quoted schema name, {channel} the quoted NOTIFY channel literal.
-- Refusals of bad input raise SQLSTATE JM400 with DETAIL naming the kind of refusal.
--
-- Name resolution (DESIGN 9.1 "search_path"): other roles may create functions and operators in
-- schemas on a caller's search_path (public, before PostgreSQL 15), and an exact match there
-- wins over a polymorphic built-in. So every entry point, a function the library or a client
-- calls by name and every trigger function, pins its search_path: {entry_point} or
-- {search_path}. Internal helpers (leading _) are reached only from pinned functions and run
-- with their path; they are not callable by PUBLIC. The helpers inlined into the library's plain
-- statements (_fast_canonical and what it calls, _event_origin) and _new_job_id (the default of
-- jobs.job_id, which the plain insert evaluates) qualify their built-ins, and write
-- OPERATOR(pg_catalog.x) where an operator's argument types are not exactly pg_catalog's (an exact
-- match in public would win over a built-in that needs an implicit cast).
-- {entry_point} also sets jobmaster.history_written off: see _jobs_inserted.


-- ---------------------------------------------------------------------------------------------
-- Validation
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION {schema}._refuse(p_kind text, p_message text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'JM400', MESSAGE = p_message, DETAIL = p_kind;
END $$;


-- Does a value fit its parameter (JSON type, nullability, options)? Plain SQL, so the bulk insert
-- checks whole batches in one statement; _check_value says what is wrong when it does not.
CREATE OR REPLACE FUNCTION {schema}._value_ok(p_param jsonb, p_value jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN jsonb_typeof(p_value) = 'null' THEN coalesce((p_param->>'nullable')::boolean, false)
        ELSE CASE p_param->>'type'
                 WHEN 'any' THEN true
                 WHEN 'integer' THEN jsonb_typeof(p_value) = 'number'
                                     AND p_value::numeric = trunc(p_value::numeric)
                 ELSE jsonb_typeof(p_value) = p_param->>'type'
             END
             AND (NOT p_param ? 'options'
                  OR EXISTS (SELECT 1 FROM jsonb_array_elements(p_param->'options') AS o
                              WHERE o.value = p_value))
    END
$$;


-- The canonical spelling of a value that fits: 5.0 for an integer parameter is 5.
-- (Inlined into the plain insert statement through _fast_canonical, which runs with the caller's
-- search_path: built-ins are qualified.)
CREATE OR REPLACE FUNCTION {schema}._canonical_value(p_param jsonb, p_value jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_param->>'type' = 'integer' AND pg_catalog.jsonb_typeof(p_value) = 'number'
                THEN pg_catalog.to_jsonb(pg_catalog.trunc(p_value::numeric)) ELSE p_value END
$$;


-- Do a job's arguments fit the parameters (an object, no unknown key, nothing required
-- missing, every value fitting)?
CREATE OR REPLACE FUNCTION {schema}._arguments_ok(p_parameters jsonb, p_arguments jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_typeof(p_arguments) = 'object'
       AND NOT EXISTS (SELECT 1 FROM jsonb_object_keys(p_arguments) AS k
                        WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_parameters) AS p
                                           WHERE p.value->>'name' = k))
       AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_parameters) AS p
                        WHERE CASE WHEN p_arguments ? (p.value->>'name')
                                   THEN NOT {schema}._value_ok(p.value, p_arguments->(p.value->>'name'))
                                   ELSE NOT p.value ? 'default' END)
$$;


-- The canonical arguments of arguments that fit: values canonical, defaults filled in.
-- (Reached from the plain insert statement too: built-ins are qualified.)
CREATE OR REPLACE FUNCTION {schema}._canonical_of(p_parameters jsonb, p_arguments jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(pg_catalog.jsonb_object_agg(
               p.value->>'name',
               CASE WHEN p_arguments ? (p.value->>'name')
                    THEN {schema}._canonical_value(p.value, p_arguments->(p.value->>'name'))
                    ELSE p.value->'default' END), '{}')
      FROM pg_catalog.jsonb_array_elements(p_parameters) AS p
$$;


-- The parameters as one jsonpath predicate that arguments without unknown keys match when they
-- fit (JSON types, whole integers, nullability, options, required ones present): the same rules
-- as _arguments_ok, but run by jsonb_path_match in C, so a bulk insert checks thousands of
-- elements in milliseconds. NULL when an option is not a scalar (then _arguments_ok checks).
CREATE OR REPLACE FUNCTION {schema}._arguments_path(p_parameters jsonb)
RETURNS jsonpath LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_param  jsonb;
    v_x      text;
    v_check  text;
    v_checks text[] := '{}';
BEGIN
    FOR v_param IN SELECT p.value FROM jsonb_array_elements(p_parameters) AS p LOOP
        v_x := '$.' || to_jsonb(v_param->>'name')::text;
        v_check := CASE v_param->>'type'
            WHEN 'any' THEN format('%s.type() != "null"', v_x)
            WHEN 'integer' THEN format('(%1$s.type() == "number" && %1$s.floor() == %1$s)', v_x)
            ELSE format('%s.type() == %s', v_x, to_jsonb(v_param->>'type')::text) END;
        IF v_param ? 'options' THEN
            IF EXISTS (SELECT 1 FROM jsonb_array_elements(v_param->'options') AS o
                        WHERE jsonb_typeof(o.value) IN ('object', 'array')) THEN
                RETURN NULL;
            END IF;
            v_check := format('(%s && %2$s.type() != "array" && %2$s.type() != "object" && (%s))',
                              v_check, v_x,
                              (SELECT string_agg(format('%s == %s', v_x, o.value::text), ' || ')
                                 FROM jsonb_array_elements(v_param->'options') AS o));
        END IF;
        IF coalesce((v_param->>'nullable')::boolean, false) THEN
            v_check := format('(%s.type() == "null" || %s)', v_x, v_check);
        END IF;
        IF v_param ? 'default' THEN
            v_check := format('(!(exists(%s)) || %s)', v_x, v_check);
        END IF;
        v_checks := v_checks || v_check;
    END LOOP;
    RETURN coalesce(nullif(array_to_string(v_checks, ' && '), ''), 'true')::jsonpath;
END $$;


-- Derives what inserting needs from a task's parameters (see migration 0003).
CREATE OR REPLACE FUNCTION {schema}._derive_task_checks()
RETURNS trigger LANGUAGE plpgsql {search_path} AS $$
BEGIN
    SELECT coalesce(array_agg(p.value->>'name'), '{}'),
           coalesce(jsonb_object_agg(p.value->>'name', p.value->'default')
                        FILTER (WHERE p.value ? 'default'), '{}'),
           coalesce(bool_or(p.value->>'type' = 'integer'), false)
      INTO NEW.parameter_names, NEW.defaults, NEW.has_integers
      FROM jsonb_array_elements(NEW.parameters) AS p;
    NEW.arguments_path := {schema}._arguments_path(NEW.parameters);
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS tasks_derive_checks ON {schema}.tasks;
CREATE TRIGGER tasks_derive_checks BEFORE INSERT OR UPDATE ON {schema}.tasks
    FOR EACH ROW EXECUTE FUNCTION {schema}._derive_task_checks();

-- derived again by these functions, for tasks deployed before them
UPDATE {schema}.tasks SET parameters = parameters;


-- Are arguments within the bounds every client can read back (DESIGN 9.1 "Hostile data
-- bounds")? Nested at most 100 deep (the arguments object is level 1) and no number of more
-- than 4,300 digits (Python refuses to read such an integer). Strings cannot hold NUL or lone
-- surrogates in jsonb, and numbers are finite. A short text can break neither bound, so the
-- common case costs one length. (Inlined into the plain insert statement: built-ins qualified.)
CREATE OR REPLACE FUNCTION {schema}._within_bounds(p_arguments jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.length(p_arguments::text) <= 200
        OR (NOT pg_catalog.jsonb_path_exists(
                    p_arguments, 'strict $.**{100 to last} ? (@.type() == "object" || @.type() == "array")')
            AND (pg_catalog.length(p_arguments::text) <= 4300
                 OR NOT EXISTS (SELECT 1 FROM pg_catalog.jsonb_path_query(
                                                  p_arguments, 'strict $.** ? (@.type() == "number")') AS n(v)
                                 WHERE pg_catalog.length(n.v::text) > 4300
                                   AND pg_catalog.length(pg_catalog.regexp_replace(n.v::text, '[^0-9]', '', 'g')) > 4300)))
$$;


-- What breaks the bounds of _within_bounds in one argument value, or NULL: for the refusal.
CREATE OR REPLACE FUNCTION {schema}._bounds_failure(p_value jsonb)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN jsonb_path_exists(p_value, 'strict $.**{99 to last} ? (@.type() == "object" || @.type() == "array")')
            THEN 'is nested deeper than 100 levels (counting the arguments object)'
        WHEN EXISTS (SELECT 1 FROM jsonb_path_query(p_value, 'strict $.** ? (@.type() == "number")') AS n(v)
                      WHERE length(regexp_replace(n.v::text, '[^0-9]', '', 'g')) > 4300)
            THEN 'holds a number of more than 4300 digits'
    END
$$;


-- Canonical arguments, the fast way: NULL unless they fit the task's arguments_path and the
-- bounds; then the defaults filled in (an integer given as 5.0 made 5 the slow way).
-- (Inlined into the plain insert statement, which runs with the caller's search_path: built-ins
-- are qualified; the operators used have exact matches in pg_catalog, which is searched first.)
CREATE OR REPLACE FUNCTION {schema}._fast_canonical(p_task {schema}.tasks, p_arguments jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_task.arguments_path IS NULL OR pg_catalog.jsonb_typeof(p_arguments) IS DISTINCT FROM 'object' THEN NULL
        WHEN p_arguments - p_task.parameter_names <> '{}' THEN NULL
        WHEN NOT coalesce(pg_catalog.jsonb_path_match(p_arguments, p_task.arguments_path, '{}', true), false) THEN NULL
        WHEN NOT {schema}._within_bounds(p_arguments) THEN NULL
        WHEN p_task.has_integers AND p_arguments::text LIKE '%.%'
            THEN {schema}._canonical_of(p_task.parameters, p_arguments)
        ELSE p_task.defaults || p_arguments
    END
$$;


-- One argument value checked against its parameter: refused, naming task and argument, if it
-- does not fit.
CREATE OR REPLACE FUNCTION {schema}._check_value(p_label text, p_param jsonb, p_value jsonb)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_name text := p_param->>'name';
BEGIN
    IF {schema}._value_ok(p_param, p_value) THEN
        RETURN;
    END IF;
    IF jsonb_typeof(p_value) = 'null' THEN
        PERFORM {schema}._refuse('invalid_argument',
            format('%s: argument "%s" must not be null', p_label, v_name));
    END IF;
    IF p_param ? 'options' THEN
        PERFORM {schema}._refuse('invalid_argument',
            format('%s: argument "%s" must be one of %s, got %s',
                   p_label, v_name, p_param->'options', p_value));
    END IF;
    PERFORM {schema}._refuse('invalid_argument',
        format('%s: argument "%s" must be %s, got %s', p_label, v_name,
               CASE p_param->>'type' WHEN 'integer' THEN 'an integer'
                                     ELSE 'a JSON ' || (p_param->>'type') END, p_value));
END $$;


-- The canonical arguments of a job: validated, defaults filled in. "ALL" passes for write_all
-- parameters when p_allow_all. Refuses what does not fit, naming task and argument.
CREATE OR REPLACE FUNCTION {schema}._canonical_arguments(
    p_task {schema}.tasks, p_arguments jsonb, p_allow_all boolean)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_label   text := p_task.type_key || '.' || p_task.task_key;
    v_param   jsonb;
    v_name    text;
    v_unknown text;
    v_fast    jsonb;
    v_failure text;
BEGIN
    p_arguments := coalesce(p_arguments, '{}');
    v_fast := {schema}._fast_canonical(p_task, p_arguments);
    IF v_fast IS NOT NULL THEN
        RETURN v_fast;
    END IF;
    IF jsonb_typeof(p_arguments) = 'object' AND NOT {schema}._within_bounds(p_arguments) THEN
        SELECT a.key, {schema}._bounds_failure(a.value) INTO v_name, v_failure
          FROM jsonb_each(p_arguments) AS a
         WHERE {schema}._bounds_failure(a.value) IS NOT NULL
         ORDER BY a.key LIMIT 1;
        PERFORM {schema}._refuse('out_of_bounds', format('%s: argument "%s" %s', v_label, v_name, v_failure));
    END IF;
    IF {schema}._arguments_ok(p_task.parameters, p_arguments) THEN
        RETURN {schema}._canonical_of(p_task.parameters, p_arguments);
    END IF;
    -- something does not fit ("ALL", or a mistake): find out what, refusing mistakes
    IF jsonb_typeof(p_arguments) <> 'object' THEN
        PERFORM {schema}._refuse('invalid_arguments',
            format('%s: arguments must be a JSON object, got %s', v_label, p_arguments));
    END IF;
    SELECT k INTO v_unknown
      FROM jsonb_object_keys(p_arguments) AS k
     WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_task.parameters) AS p
                        WHERE p.value->>'name' = k)
     ORDER BY k LIMIT 1;
    IF v_unknown IS NOT NULL THEN
        PERFORM {schema}._refuse('unknown_argument',
            format('%s: unknown argument "%s" (parameters: %s)', v_label, v_unknown,
                   (SELECT coalesce(string_agg(p.value->>'name', ', '), 'none')
                      FROM jsonb_array_elements(p_task.parameters) AS p)));
    END IF;
    FOR v_param IN SELECT p.value FROM jsonb_array_elements(p_task.parameters) AS p LOOP
        v_name := v_param->>'name';
        IF p_arguments ? v_name THEN
            IF NOT (p_allow_all AND p_arguments->v_name = '"ALL"' AND v_name = ANY (p_task.write_all)) THEN
                PERFORM {schema}._check_value(v_label, v_param, p_arguments->v_name);
            END IF;
        ELSIF NOT v_param ? 'default' THEN
            PERFORM {schema}._refuse('missing_argument',
                format('%s: missing required argument "%s"', v_label, v_name));
        END IF;
    END LOOP;
    RETURN {schema}._canonical_of(p_task.parameters, p_arguments);
END $$;


-- ---------------------------------------------------------------------------------------------
-- Dependencies
-- ---------------------------------------------------------------------------------------------

-- The arguments of one dependency of a job: those it is matched on (its constants, and `same`
-- values with arithmetic, taken from the dependent's arguments) and those it is created with
-- (then the dependent's argument of the same name, then the default; canonical). failure says
-- why the specified ones cannot be computed, creation_failure why the job could not be created
-- (which matters only when no matching job exists).
CREATE OR REPLACE FUNCTION {schema}._dependency_arguments(
    p_dep jsonb, p_dep_task {schema}.tasks, p_dependent {schema}.tasks, p_arguments jsonb,
    OUT specified jsonb, OUT creation jsonb, OUT failure text, OUT creation_failure text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_label  text := p_dep_task.type_key || '.' || p_dep_task.task_key;
    v_name   text;
    v_spec   jsonb;
    v_value  jsonb;
    v_number numeric;
    v_op     jsonb;
    v_param  jsonb;
BEGIN
    IF p_dep_task.task_id IS NULL THEN
        failure := format('dependency %s.%s is not deployed', p_dep->>'type_key', p_dep->>'task_key');
        RETURN;
    END IF;
    specified := '{}';
    FOR v_name, v_spec IN SELECT a.key, a.value FROM jsonb_each(p_dep->'arguments') AS a LOOP
        IF v_spec ? 'value' THEN
            v_value := v_spec->'value';
        ELSE
            v_value := p_arguments->(v_spec->>'same');
            IF jsonb_array_length(coalesce(v_spec->'ops', '[]')) > 0 THEN
                IF jsonb_typeof(v_value) IS DISTINCT FROM 'number' THEN
                    failure := format('dependency %s: argument "%s" is computed from "%s" = %s, '
                                      'which is not a number', v_label, v_name, v_spec->>'same',
                                      coalesce(v_value::text, 'nothing'));
                    RETURN;
                END IF;
                v_number := v_value::numeric;
                FOR v_op IN SELECT o.value FROM jsonb_array_elements(v_spec->'ops') AS o LOOP
                    v_number := CASE v_op->>0
                        WHEN '+'  THEN v_number + (v_op->>1)::numeric
                        WHEN '-'  THEN v_number - (v_op->>1)::numeric
                        WHEN 'r-' THEN (v_op->>1)::numeric - v_number
                        WHEN '*'  THEN v_number * (v_op->>1)::numeric
                        WHEN '/'  THEN v_number / (v_op->>1)::numeric
                        WHEN 'r/' THEN (v_op->>1)::numeric / nullif(v_number, 0)
                    END;
                END LOOP;
                IF v_number IS NULL THEN
                    failure := format('dependency %s: argument "%s" divides by zero', v_label, v_name);
                    RETURN;
                END IF;
                v_number := trim_scale(v_number);
                IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_dep_task.parameters) AS p
                            WHERE p.value->>'name' = v_name AND p.value->>'type' = 'integer')
                   AND v_number <> trunc(v_number) THEN
                    failure := format('dependency %s: argument "%s" = %s is not a whole number',
                                      v_label, v_name, v_number);
                    RETURN;
                END IF;
                v_value := to_jsonb(v_number);
            END IF;
        END IF;
        specified := specified || jsonb_build_object(v_name, v_value);
    END LOOP;

    -- creation: the specified arguments, then the dependent's of the same name, then defaults
    creation := specified;
    FOR v_param IN SELECT p.value FROM jsonb_array_elements(p_dep_task.parameters) AS p LOOP
        CONTINUE WHEN creation ? (v_param->>'name');
        IF p_arguments ? (v_param->>'name') THEN
            creation := creation || jsonb_build_object(v_param->>'name', p_arguments->(v_param->>'name'));
        ELSIF NOT v_param ? 'default' THEN
            creation_failure := format('dependency %s: required argument "%s" is unknown '
                                       '(not specified by the dependency, not an argument of %s.%s)',
                                       v_label, v_param->>'name', p_dependent.type_key, p_dependent.task_key);
            creation := NULL;
            RETURN;
        END IF;
    END LOOP;
    IF {schema}._arguments_ok(p_dep_task.parameters, creation) THEN
        creation := {schema}._canonical_of(p_dep_task.parameters, creation);
    ELSE
        -- "ALL" (a fan-out dependency), or a value that does not fit: say which
        BEGIN
            creation := {schema}._canonical_arguments(p_dep_task, creation, true);
        EXCEPTION WHEN SQLSTATE 'JM400' THEN
            creation_failure := SQLERRM;
            creation := NULL;
        END;
    END IF;
END $$;


-- The plan for inserting a batch of jobs of one task (canonical arguments, in batch order): the
-- tree of their dependencies, every level and every element at once, each step classified:
--   twin       the requested job is identical to an active job: that job's id, nothing to do
--   new        to be inserted (a requested job, or a missing dependency: priority + 1)
--   pending    a matching job is waiting, blocked or running: link to it (match)
--   satisfied  a matching job completed within the dependency's window: nothing to do
--   fan_out    a missing dependency with "ALL" arguments: created through _fan_out
--   failed     the dependency cannot be created (failure says why): its requested job fails
-- Nothing is locked: a pending job may finish before the links to it commit, which the links'
-- check at commit settles (_check_link), so no client transaction holds up a worker.
-- A dependency's priority is its dependent's + 1, at most 2^31 - 1.
CREATE OR REPLACE FUNCTION {schema}._plan_dependencies(
    p_task {schema}.tasks, p_priority int, p_arguments jsonb[])
RETURNS {schema}.plan_step[] LANGUAGE plpgsql AS $$
DECLARE
    v_plan {schema}.plan_step[];
BEGIN
    WITH RECURSIVE
    -- the requested jobs (depth 0), then, level by level, the dependencies of every job
    -- that is to be inserted
    tree AS (
        SELECT r.ord::int AS root, 0 AS depth, NULL::int AS parent_task, NULL::uuid AS parent_hash,
               p_task.task_id AS task_id, r.args AS arguments, r.args_hash, p_priority AS priority,
               CASE WHEN twin.job_id IS NULL THEN 'new' ELSE 'twin' END AS kind,
               twin.job_id AS match, NULL::text AS failure
          FROM (SELECT u.args, u.ord, md5(u.args::text)::uuid AS args_hash
                  FROM unnest(p_arguments) WITH ORDINALITY AS u(args, ord)) AS r
          LEFT JOIN LATERAL (SELECT {schema}._active_twin(p_task.task_id, r.args_hash) AS job_id) AS twin
            ON true
        UNION ALL
        SELECT t.root, t.depth + 1, t.task_id, t.args_hash, dt.task_id, a.creation,
               md5(a.creation::text)::uuid, least(t.priority::bigint + 1, 2147483647)::int,
               CASE WHEN a.failure IS NOT NULL OR t.depth >= 100 THEN 'failed'
                    WHEN pending.job_id IS NOT NULL THEN 'pending'
                    WHEN satisfied.found THEN 'satisfied'
                    WHEN a.creation_failure IS NOT NULL THEN 'failed'
                    WHEN EXISTS (SELECT 1 FROM unnest(dt.write_all) AS w
                                  WHERE a.creation->w = '"ALL"') THEN 'fan_out'
                    ELSE 'new' END,
               pending.job_id,
               coalesce(a.failure,
                        CASE WHEN pending.job_id IS NULL AND satisfied.found IS NULL
                             THEN a.creation_failure END,
                        CASE WHEN t.depth >= 100
                             THEN format('%s.%s: dependency chain deeper than 100',
                                         tt.type_key, tt.task_key) END)
          FROM tree AS t
          JOIN {schema}.tasks AS tt ON tt.task_id = t.task_id
         CROSS JOIN LATERAL jsonb_array_elements(tt.dependencies) AS d(dep)
          LEFT JOIN {schema}.tasks AS dt
            ON dt.type_key = d.dep->>'type_key' AND dt.task_key = d.dep->>'task_key'
         CROSS JOIN LATERAL {schema}._dependency_arguments(d.dep, dt, tt, t.arguments) AS a
          -- pending: an active job whose arguments contain the specified ones
          LEFT JOIN LATERAL (
                SELECT j.job_id FROM {schema}.jobs AS j
                 WHERE a.failure IS NULL AND j.task_id = dt.task_id AND j.is_dependency
                   AND j.status IN ('waiting', 'blocked', 'running')
                   AND j.arguments @> a.specified
                 ORDER BY j.priority DESC, j.seq
                 LIMIT 1) AS pending ON true
          -- satisfied: such a job completed within the freshness window
          LEFT JOIN LATERAL (
                SELECT true AS found FROM {schema}.jobs AS j
                 WHERE a.failure IS NULL AND j.task_id = dt.task_id AND j.is_dependency
                   AND j.status = 'complete'
                   AND j.finished_at >= now() - (d.dep->>'hours')::double precision * interval '1 hour'
                   AND j.arguments @> a.specified
                 LIMIT 1) AS satisfied ON true
         WHERE t.kind = 'new'
    )
    SELECT array_agg(ROW(t.*)::{schema}.plan_step ORDER BY t.root, t.depth) INTO v_plan FROM tree AS t;
    RETURN v_plan;
END $$;


-- What a plan means for each requested job: its active twin, or the status to insert it with
-- (failed, naming the shallowest dependency that cannot be created; blocked when it waits for
-- a dependency; else waiting) and that failure.
CREATE OR REPLACE FUNCTION {schema}._plan_verdicts(p_plan {schema}.plan_step[])
RETURNS TABLE (root int, args_hash uuid, twin uuid, status text, failure text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT s.root,
           (array_agg(s.args_hash) FILTER (WHERE s.depth = 0))[1],
           (array_agg(s.match) FILTER (WHERE s.depth = 0))[1],
           CASE WHEN bool_or(s.kind = 'failed') THEN 'failed'
                WHEN bool_or(s.depth = 1 AND s.kind IN ('new', 'pending', 'fan_out')) THEN 'blocked'
                ELSE 'waiting' END,
           (array_agg(s.failure ORDER BY s.depth) FILTER (WHERE s.kind = 'failed'))[1]
      FROM unnest(p_plan) AS s
     GROUP BY s.root
$$;


-- Carries out the dependency steps of a plan for the requested jobs that were inserted blocked
-- (p_root_ids[root]; NULL for the others): creates the missing dependencies (once each, however
-- many jobs need them) and links every dependent to its dependencies. "ALL" dependencies are
-- fanned out first. Nothing existing is locked or updated here: a link to a job that existed
-- before (a pending match, or an identical job another transaction inserted meanwhile) is
-- checked at commit instead (_check_link), which also raises that job's priority.
CREATE OR REPLACE FUNCTION {schema}._carry_out_plan(p_plan {schema}.plan_step[], p_root_ids uuid[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_fanned    uuid[] := '{}';
    v_step      {schema}.plan_step;
    v_i         int;
    v_tasks     int[] := '{}';   -- the dependencies created here: task, arguments hash, id
    v_hashes    uuid[] := '{}';
    v_ids       uuid[] := '{}';
    v_unlinked  int;
BEGIN
    -- rare: a dependency with "ALL" arguments: its fan-out parent is created (or found), and the
    -- step links to it like a pending one
    FOR v_i IN SELECT s.ordinality FROM unnest(p_plan) WITH ORDINALITY AS s
                WHERE s.kind = 'fan_out' AND p_root_ids[s.root] IS NOT NULL LOOP
        v_step := p_plan[v_i];
        v_step.kind := 'pending';
        v_step.match := {schema}._fan_out(
            (SELECT t FROM {schema}.tasks AS t WHERE t.task_id = v_step.task_id),
            v_step.priority, v_step.arguments);
        p_plan[v_i] := v_step;
        v_fanned := v_fanned || v_step.match;
    END LOOP;

    LOOP
        WITH
        -- the steps to carry out: links to pending jobs and jobs to create, of blocked requested jobs
        steps AS (
            SELECT s.* FROM unnest(p_plan) AS s
             WHERE s.depth > 0 AND s.kind IN ('new', 'pending') AND p_root_ids[s.root] IS NOT NULL
        ),
        -- missing dependencies not created yet, created once each; blocked when they have
        -- dependencies to wait for. One identical to a job another transaction inserted
        -- meanwhile is skipped (the next statement links to that job).
        created AS (
            INSERT INTO {schema}.jobs AS j (task_id, priority, arguments, args_hash, status,
                                            is_dependency, max_attempts)
            SELECT n.task_id, max(n.priority), n.arguments, n.args_hash,
                   CASE WHEN EXISTS (SELECT 1 FROM steps AS c
                                      WHERE c.parent_task = n.task_id AND c.parent_hash = n.args_hash)
                        THEN 'blocked' ELSE 'waiting' END,
                   t.is_dependency, t.retries + 1
              FROM steps AS n
              JOIN {schema}.tasks AS t ON t.task_id = n.task_id
             WHERE n.kind = 'new'
               AND NOT (n.task_id, n.args_hash) IN (SELECT * FROM unnest(v_tasks, v_hashes))
             GROUP BY n.task_id, n.args_hash, n.arguments, t.is_dependency, t.retries
            ON CONFLICT (task_id, args_hash) WHERE status IN ('waiting', 'blocked', 'running')
            DO NOTHING
            RETURNING j.job_id, j.task_id, j.args_hash
        )
        SELECT v_tasks || coalesce(array_agg(c.task_id), '{}'), v_hashes || coalesce(array_agg(c.args_hash), '{}'),
               v_ids || coalesce(array_agg(c.job_id), '{}')
          INTO v_tasks, v_hashes, v_ids
          FROM created AS c;

        -- a later statement, whose snapshot sees the identical jobs that made us skip
        WITH
        steps AS (
            SELECT s.* FROM unnest(p_plan) AS s
             WHERE s.depth > 0 AND s.kind IN ('new', 'pending') AND p_root_ids[s.root] IS NOT NULL
        ),
        created AS (
            SELECT * FROM unnest(v_tasks, v_hashes, v_ids) AS c(task_id, args_hash, job_id)
        ),
        -- each step's edge: its dependent (a requested job, or a job created here: an existing
        -- one has its own links) and its job; a job that existed before is checked at commit
        edges AS (
            SELECT CASE WHEN s.depth = 1 THEN p_root_ids[s.root] ELSE dependent.job_id END AS job_id,
                   CASE WHEN s.kind = 'pending' THEN s.match
                        ELSE coalesce(dependency.job_id, {schema}._active_twin(s.task_id, s.args_hash)) END
                       AS depends_on,
                   s.kind = 'pending' OR dependency.job_id IS NULL AS check_at_commit
              FROM steps AS s
              LEFT JOIN created AS dependent
                ON dependent.task_id = s.parent_task AND dependent.args_hash = s.parent_hash
              LEFT JOIN created AS dependency
                ON dependency.task_id = s.task_id AND dependency.args_hash = s.args_hash
             WHERE s.depth = 1 OR dependent.job_id IS NOT NULL
        ),
        -- the links, in job_id order of what they link to: the checks at commit lock in that order
        linked AS (
            INSERT INTO {schema}.job_dependencies (job_id, depends_on, check_at_commit)
            SELECT e.job_id, e.depends_on, bool_or(e.check_at_commit) FROM edges AS e
             WHERE e.depends_on IS NOT NULL
             GROUP BY e.job_id, e.depends_on
             ORDER BY e.depends_on
            ON CONFLICT DO NOTHING
        )
        SELECT count(*) INTO v_unlinked FROM edges AS e WHERE e.depends_on IS NULL;
        -- rare: an identical job that made us skip finished meanwhile: create the dependency now
        EXIT WHEN v_unlinked = 0;
    END LOOP;

    -- a fan-out parent that failed at creation (a child could not be created) fails its dependents
    IF cardinality(v_fanned) > 0 THEN
        PERFORM {schema}._settle(ARRAY(SELECT j.job_id FROM {schema}.jobs AS j
                                        WHERE j.job_id = ANY (v_fanned) AND j.status = 'failed'));
    END IF;
END $$;


-- The check at commit of a link to a job that existed before the linking transaction (queued by
-- the deferred constraint trigger job_dependencies_check_at_commit). Linking locks nothing, so a
-- worker never waits on a client's open transaction; the dependency may have finished since the
-- plan saw it pending. Here, at commit, it is locked (workers then wait for this commit alone,
-- and their settling afterwards sees the link), given the dependent's priority + 1 if it is
-- still waiting or blocked, and if it finished already, the dependent is settled now.
-- It runs at COMMIT, after add_job returned: in the client's role and with the client's
-- settings. So it is SECURITY DEFINER (before PostgreSQL 18 a deferred trigger runs as the role
-- current at commit: the insert-only web role, which may not touch jobs) and an {entry_point}
-- (a client's jobmaster.history_written = on must not silence the history and NOTIFY of the
-- dependent it settles).
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


-- Moves the dependents of jobs that just reached a final status: a dependency failed or was
-- cancelled -> failed (final, transitively); all dependencies complete -> waiting, or complete for
-- an "ALL" parent (whose own dependents are then settled in the next round).
CREATE OR REPLACE FUNCTION {schema}._settle(p_finished uuid[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WHILE cardinality(p_finished) > 0 LOOP
        -- the common case, cheaply: nothing waits for these jobs
        EXIT WHEN NOT EXISTS (SELECT 1 FROM {schema}.job_dependencies AS d
                               WHERE d.depends_on = ANY (p_finished));
        WITH
        -- blocked jobs waiting for one of the finished jobs
        dependents AS (
            SELECT DISTINCT d.job_id
              FROM {schema}.job_dependencies AS d
              JOIN {schema}.jobs AS j ON j.job_id = d.job_id
             WHERE d.depends_on = ANY (p_finished) AND j.status = 'blocked'
        ),
        -- for each: are all its dependencies complete, and which one failed (if any)
        verdicts AS (
            SELECT dep.job_id,
                   bool_and(x.status = 'complete') AS all_complete,
                   (array_agg(format('%s.%s (%s) %s', t.type_key, t.task_key, x.job_id, x.status))
                       FILTER (WHERE x.status IN ('failed', 'cancelled')))[1] AS failed_dependency
              FROM dependents AS dep
              JOIN {schema}.job_dependencies AS d ON d.job_id = dep.job_id
              JOIN {schema}.jobs AS x ON x.job_id = d.depends_on
              JOIN {schema}.tasks AS t ON t.task_id = x.task_id
             GROUP BY dep.job_id
        ),
        -- the dependents that can move, moved
        moved AS (
            UPDATE {schema}.jobs AS j
               SET status = CASE WHEN v.failed_dependency IS NOT NULL THEN 'failed'
                                 WHEN j.is_parent THEN 'complete'
                                 ELSE 'waiting' END,
                   finished_at = CASE WHEN v.failed_dependency IS NOT NULL OR j.is_parent
                                      THEN now() END,
                   message = CASE WHEN v.failed_dependency IS NOT NULL
                                  THEN 'dependency ' || v.failed_dependency END,
                   run_after = now()
              FROM verdicts AS v
             WHERE j.job_id = v.job_id AND j.status = 'blocked'
               AND (v.failed_dependency IS NOT NULL OR v.all_complete)
            RETURNING j.job_id, j.status
        )
        SELECT coalesce(array_agg(m.job_id) FILTER (WHERE m.status <> 'waiting'), '{}')
          INTO p_finished FROM moved AS m;
    END LOOP;
END $$;


-- ---------------------------------------------------------------------------------------------
-- Inserting jobs
-- ---------------------------------------------------------------------------------------------

-- A time-ordered job id: the default of jobs.job_id (migration 0005 says why; this replaces its
-- first version). The plain insert (queries.sql insert_job_fast) evaluates it with the caller's
-- search_path, where set_bit(bytea, integer, integer) and *(numeric, integer) planted in public
-- would be better matches than pg_catalog's set_bit(bytea, bigint, integer) and
-- *(numeric, numeric): every built-in is qualified, the operator too. (EXTRACT, OVERLAY and
-- SUBSTRING syntax calls pg_catalog's functions already.)
CREATE OR REPLACE FUNCTION {schema}._new_job_id() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    -- a random v4 uuid; its first 6 bytes replaced by the milliseconds; version bits 0100 -> 0111
    SELECT pg_catalog.encode(
               pg_catalog.set_bit(pg_catalog.set_bit(
                   overlay(pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                           PLACING substring(pg_catalog.int8send(pg_catalog.floor(
                                                 extract(epoch FROM pg_catalog.clock_timestamp())
                                                 OPERATOR(pg_catalog.*) 1000)::bigint)
                                             FROM 3)
                           FROM 1 FOR 6),
                   52, 1), 53, 1),
               'hex')::uuid
$$;


-- The identical job (same task, same canonical arguments) that is waiting, blocked or running.
CREATE OR REPLACE FUNCTION {schema}._active_twin(p_task_id int, p_args_hash uuid)
RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT job_id FROM {schema}.jobs
     WHERE task_id = p_task_id AND args_hash = p_args_hash
       AND status IN ('waiting', 'blocked', 'running')
$$;


-- Inserts a batch of jobs of a task that has dependencies (canonical arguments), resolving the
-- dependencies of all of them together: one id per element, in order. A job whose dependency
-- cannot be created is inserted failed, and nothing is created for it.
CREATE OR REPLACE FUNCTION {schema}._insert_batch(
    p_task {schema}.tasks, p_priority int, p_arguments jsonb[])
RETURNS uuid[] LANGUAGE plpgsql AS $$
DECLARE
    v_plan    {schema}.plan_step[] := {schema}._plan_dependencies(p_task, p_priority, p_arguments);
    v_ids     uuid[];
    v_blocked uuid[];
    v_i       int;
BEGIN
    WITH
    -- each requested job's twin, or the status to insert it with
    verdicts AS (
        SELECT * FROM {schema}._plan_verdicts(v_plan)
    ),
    -- the requested jobs that have no active twin, once each
    inserted AS (
        INSERT INTO {schema}.jobs AS j (task_id, priority, arguments, args_hash, status,
                                        is_dependency, max_attempts, message, finished_at)
        SELECT DISTINCT ON (v.args_hash) p_task.task_id, p_priority, p_arguments[v.root],
               v.args_hash, v.status, p_task.is_dependency, p_task.retries + 1, v.failure,
               CASE WHEN v.status = 'failed' THEN now() END
          FROM verdicts AS v
         WHERE v.twin IS NULL
         ORDER BY v.args_hash, v.root
        ON CONFLICT (task_id, args_hash) WHERE status IN ('waiting', 'blocked', 'running')
        DO NOTHING
        RETURNING j.job_id, j.args_hash, j.status
    )
    SELECT array_agg(coalesce(v.twin, i.job_id) ORDER BY v.root),
           array_agg(CASE WHEN i.status = 'blocked' THEN i.job_id END ORDER BY v.root)
      INTO v_ids, v_blocked
      FROM verdicts AS v
      LEFT JOIN inserted AS i ON i.args_hash = v.args_hash;

    IF EXISTS (SELECT 1 FROM unnest(v_blocked) AS b WHERE b IS NOT NULL) THEN
        PERFORM {schema}._carry_out_plan(v_plan, v_blocked);
    END IF;

    -- an identical job inserted by a concurrent transaction is not in our snapshot: ask again
    FOR v_i IN SELECT i FROM generate_subscripts(v_ids, 1) AS i WHERE v_ids[i] IS NULL LOOP
        v_ids[v_i] := coalesce({schema}._active_twin(p_task.task_id, md5(p_arguments[v_i]::text)::uuid),
                               ({schema}._insert_batch(p_task, p_priority, ARRAY[p_arguments[v_i]]))[1]);
    END LOOP;
    RETURN v_ids;
END $$;


-- Inserts one job (or hands back an identical active one), resolving its dependencies.
CREATE OR REPLACE FUNCTION {schema}._insert_job(
    p_type_key text, p_task_key text, p_priority int, p_arguments jsonb)
RETURNS uuid LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_task {schema}.tasks;
    v_args jsonb;
    v_hash uuid;
    v_id   uuid;
BEGIN
    SELECT * INTO v_task FROM {schema}.tasks WHERE type_key = p_type_key AND task_key = p_task_key;
    IF NOT FOUND THEN
        PERFORM {schema}._refuse('unknown_task',
            format('unknown task %s.%s (is it deployed?)', p_type_key, p_task_key));
    END IF;
    v_args := {schema}._canonical_arguments(v_task, p_arguments, true);
    IF cardinality(v_task.write_all) > 0 THEN
        IF EXISTS (SELECT 1 FROM unnest(v_task.write_all) AS p WHERE v_args->p = '"ALL"') THEN
            RETURN {schema}._fan_out(v_task, coalesce(p_priority, 0), v_args);
        END IF;
    END IF;
    IF jsonb_array_length(v_task.dependencies) > 0 THEN
        RETURN ({schema}._insert_batch(v_task, coalesce(p_priority, 0), ARRAY[v_args]))[1];
    END IF;

    v_hash := md5(v_args::text)::uuid;
    LOOP
        INSERT INTO {schema}.jobs AS j (task_id, priority, arguments, args_hash, status,
                                        is_dependency, max_attempts)
        VALUES (v_task.task_id, coalesce(p_priority, 0), v_args, v_hash, 'waiting',
                v_task.is_dependency, v_task.retries + 1)
        ON CONFLICT (task_id, args_hash) WHERE status IN ('waiting', 'blocked', 'running')
        DO NOTHING
        RETURNING j.job_id INTO v_id;
        EXIT WHEN v_id IS NOT NULL;
        -- an identical active job: hand back its id (unless it finished meanwhile: insert again)
        v_id := {schema}._active_twin(v_task.task_id, v_hash);
        EXIT WHEN v_id IS NOT NULL;
    END LOOP;
    RETURN v_id;
END $$;


-- "ALL" for write_all parameters: a parent job blocked on one child per option (the cartesian
-- product over several such parameters), the children inserted as one batch. The parent
-- completes when all children complete.
CREATE OR REPLACE FUNCTION {schema}._fan_out(
    p_task {schema}.tasks, p_priority int, p_arguments jsonb)
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
                                        is_dependency, max_attempts)
        VALUES (p_task.task_id, p_priority, p_arguments, v_hash, 'blocked', true,
                p_task.is_dependency, 1)
        ON CONFLICT (task_id, args_hash) WHERE status IN ('waiting', 'blocked', 'running')
        DO NOTHING
        RETURNING j.job_id INTO v_parent;
        EXIT WHEN v_parent IS NOT NULL;
        v_parent := {schema}._active_twin(p_task.task_id, v_hash);
        IF v_parent IS NOT NULL THEN
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
      FROM unnest({schema}.insert_jobs(p_task.type_key, p_task.task_key, p_priority, v_combos)) AS c
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


-- The arguments of the SQL interface as jsonb. json takes what jsonb refuses (\u0000, lone
-- surrogates, numbers beyond numeric's range): refused here, naming the task.
CREATE OR REPLACE FUNCTION {schema}._jsonb_arguments(p_type_key text, p_task_key text, p_arguments json)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN p_arguments::jsonb;
EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
    PERFORM {schema}._refuse('invalid_arguments',
        format('%s.%s: arguments cannot be stored: %s', p_type_key, p_task_key, SQLERRM));
END $$;


-- The SQL interface: CALL insert_job(...) hands back the id through INOUT job_id.
CREATE OR REPLACE PROCEDURE {schema}.insert_job(
    type_key text, task_key text, priority int, arguments json, INOUT job_id uuid DEFAULT NULL)
LANGUAGE plpgsql SECURITY DEFINER {entry_point} AS $$
BEGIN
    job_id := {schema}._insert_job(type_key, task_key, priority,
                                   {schema}._jsonb_arguments(type_key, task_key, arguments));
END $$;


-- The same as a function, for SELECT and for trigger functions.
CREATE OR REPLACE FUNCTION {schema}.add_job(
    type_key text, task_key text, priority int, arguments json)
RETURNS uuid LANGUAGE sql SECURITY DEFINER {entry_point} AS $$
    SELECT {schema}._insert_job(type_key, task_key, priority,
                                {schema}._jsonb_arguments(type_key, task_key, arguments));
$$;


-- Bulk insert: one id per element, in order (identical elements share one id); all or nothing.
-- One set-based statement (one trigger run, one NOTIFY); tasks with dependencies resolve them
-- for the whole batch at once. Only elements with "ALL" are inserted one by one.
CREATE OR REPLACE FUNCTION {schema}.insert_jobs(
    p_type_key text, p_task_key text, p_priority int, p_arguments jsonb[])
RETURNS uuid[] LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_task      {schema}.tasks;
    v_canonical jsonb[];
    v_ids       uuid[] := '{}';
    v_args      jsonb;
    v_i         int;
BEGIN
    SELECT * INTO v_task FROM {schema}.tasks WHERE type_key = p_type_key AND task_key = p_task_key;
    IF NOT FOUND THEN
        PERFORM {schema}._refuse('unknown_task',
            format('unknown task %s.%s (is it deployed?)', p_type_key, p_task_key));
    END IF;
    IF coalesce(cardinality(p_arguments), 0) = 0 THEN
        RETURN '{}';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_arguments) AS a, unnest(v_task.write_all) AS w
                WHERE a->w = '"ALL"') THEN
        FOREACH v_args IN ARRAY p_arguments LOOP
            v_ids := v_ids || {schema}._insert_job(p_type_key, p_task_key, p_priority, v_args);
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
        RETURN {schema}._insert_batch(v_task, coalesce(p_priority, 0), v_canonical);
    END IF;

    WITH
    -- the canonical elements, numbered and hashed
    batch AS (
        SELECT u.ord, u.args, md5(u.args::text)::uuid AS args_hash
          FROM unnest(v_canonical) WITH ORDINALITY AS u(args, ord)
    ),
    -- the jobs; an element identical to an active job, or to an earlier element, is skipped
    inserted AS (
        INSERT INTO {schema}.jobs (task_id, priority, arguments, args_hash, status, is_dependency,
                                   max_attempts)
        SELECT v_task.task_id, coalesce(p_priority, 0), b.args, b.args_hash,
               'waiting', v_task.is_dependency, v_task.retries + 1
          FROM batch AS b
        ON CONFLICT (task_id, args_hash) WHERE status IN ('waiting', 'blocked', 'running')
        DO NOTHING
        RETURNING job_id, args_hash
    )
    SELECT array_agg(i.job_id ORDER BY b.ord) INTO v_ids
      FROM batch AS b
      LEFT JOIN inserted AS i ON i.args_hash = b.args_hash;

    IF array_position(v_ids, NULL) IS NOT NULL THEN
        -- skipped elements: the ids of their identical active jobs (this statement also sees those
        -- committed meanwhile by other transactions)
        SELECT array_agg(coalesce(v_ids[b.ord], j.job_id) ORDER BY b.ord) INTO v_ids
          FROM unnest(v_canonical) WITH ORDINALITY AS b(args, ord)
          LEFT JOIN {schema}.jobs AS j
            ON v_ids[b.ord] IS NULL AND j.task_id = v_task.task_id
           AND j.args_hash = md5(b.args::text)::uuid AND j.status IN ('waiting', 'blocked', 'running');
        -- rare: an identical job that finished meanwhile; insert one by one
        FOR v_i IN SELECT i FROM generate_subscripts(v_ids, 1) AS i WHERE v_ids[i] IS NULL LOOP
            v_ids[v_i] := {schema}._insert_job(p_type_key, p_task_key, p_priority, p_arguments[v_i]);
        END LOOP;
    END IF;
    RETURN coalesce(v_ids, '{}');
END $$;


-- ---------------------------------------------------------------------------------------------
-- Claiming and recording outcomes (the hot path)
-- ---------------------------------------------------------------------------------------------

-- Claims up to p_limit runnable jobs of the given tasks for a worker whose free process units
-- are p_units: highest priority first, then oldest; process_limit exact across all workers.
CREATE OR REPLACE FUNCTION {schema}.claim_jobs(
    p_worker uuid, p_task_ids int[], p_limit int, p_units int)
RETURNS TABLE (job_id uuid, task_id int, priority int, arguments jsonb, attempts int,
               max_attempts int)
-- A queue table's statistics are always stale: without enable_sort = off, a plan that reads every
-- waiting job and sorts them looks cheaper than walking the claim index in order, and is far
-- slower. Before PostgreSQL 18 a disabled sort costs 1e10, which would make JIT compile every
-- claim (~100 ms): hence jit = off. Bitmap scans are off because they never mark the index
-- entries of finished jobs dead: until vacuum, every count of a task's running jobs would visit
-- the table for each finished job of the task (see migration 0006).
LANGUAGE plpgsql {entry_point} SET enable_sort = off SET jit = off SET enable_bitmapscan = off AS $$
DECLARE
    v_limited   int[];
    v_max_units int;
    v_eligible  int[];
    v_caps      int[];
    v_ids       uuid[] := '{}';
    v_taken     jsonb := '{}';
    v_left      int := p_units;
    v_row       record;
BEGIN
    -- A claim need not wait for its WAL flush: lost in a crash, it only puts the job back to
    -- waiting, as a crash does anyway (outcomes are still committed durably).
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT array_agg(t.task_id) FILTER (WHERE t.process_limit IS NOT NULL), max(t.process_units)
      INTO v_limited, v_max_units
      FROM {schema}.tasks AS t WHERE t.task_id = ANY (p_task_ids);

    IF v_limited IS NULL AND v_max_units * p_limit <= p_units THEN
        -- fast path: no limits to respect, the units budget cannot be exceeded
        RETURN QUERY
        WITH
        -- the next runnable jobs, locked; rows other claimers hold are skipped
        next_jobs AS (
            SELECT j.job_id FROM {schema}.jobs AS j
             WHERE j.status = 'waiting' AND j.run_after <= now() AND j.task_id = ANY (p_task_ids)
             ORDER BY j.priority DESC, j.seq
             LIMIT p_limit
             FOR NO KEY UPDATE SKIP LOCKED
        )
        UPDATE {schema}.jobs AS j
           SET status = 'running', worker_id = p_worker, attempts = j.attempts + 1,
               started_at = now(), message = NULL
          FROM next_jobs AS n
         WHERE j.job_id = n.job_id
        RETURNING j.job_id, j.task_id, j.priority, j.arguments, j.attempts, j.max_attempts;
        RETURN;
    END IF;

    -- Limited tasks: lock their rows (those another claimer holds are skipped this round), then
    -- count their running jobs in a later statement, whose snapshot sees every committed claim.
    SELECT coalesce(array_agg(t.task_id), '{}') INTO v_limited
      FROM (SELECT t.task_id FROM {schema}.tasks AS t
             WHERE t.task_id = ANY (v_limited) ORDER BY t.task_id
               FOR NO KEY UPDATE SKIP LOCKED) AS t;
    SELECT array_agg(t.task_id), array_agg(least(p_limit, coalesce(t.process_limit - r.running, t.process_limit, p_limit)))
      INTO v_eligible, v_caps
      FROM {schema}.tasks AS t
      -- running: jobs_running_idx; abandoned (cancelled, thread still running): jobs_abandoned_idx
      LEFT JOIN LATERAL (SELECT (SELECT count(*)::int FROM {schema}.jobs AS j
                                  WHERE j.task_id = t.task_id AND j.status = 'running')
                              + (SELECT count(*)::int FROM {schema}.jobs AS j
                                  WHERE j.task_id = t.task_id AND j.abandoned
                                    AND j.status <> 'running') AS running) AS r ON true
     WHERE t.task_id = ANY (p_task_ids) AND t.process_units <= p_units
       AND (t.process_limit IS NULL OR t.task_id = ANY (v_limited));

    -- candidates: up to each task's cap, locked; then taken greedily within the units budget
    FOR v_row IN
        SELECT c.job_id, c.task_id, c.process_units
          FROM unnest(v_eligible, v_caps) AS e(task_id, cap)
         CROSS JOIN LATERAL (
               SELECT j.job_id, j.task_id, j.priority, j.seq, t.process_units
                 FROM {schema}.jobs AS j JOIN {schema}.tasks AS t ON t.task_id = j.task_id
                WHERE j.task_id = e.task_id AND j.status = 'waiting' AND j.run_after <= now()
                ORDER BY j.priority DESC, j.seq
                LIMIT greatest(e.cap, 0)
                  FOR NO KEY UPDATE OF j SKIP LOCKED) AS c
         ORDER BY c.priority DESC, c.seq
    LOOP
        CONTINUE WHEN v_row.process_units > v_left;
        v_left := v_left - v_row.process_units;
        v_ids := v_ids || v_row.job_id;
        EXIT WHEN cardinality(v_ids) >= p_limit;
    END LOOP;

    RETURN QUERY
    UPDATE {schema}.jobs AS j
       SET status = 'running', worker_id = p_worker, attempts = j.attempts + 1,
           started_at = now(), message = NULL
     WHERE j.job_id = ANY (v_ids)
    RETURNING j.job_id, j.task_id, j.priority, j.arguments, j.attempts, j.max_attempts;
END $$;


-- Records successes. Fenced: only jobs still running for this worker and attempt are touched,
-- so the late result of a rescued job is dropped. Returns the ids recorded.
CREATE OR REPLACE FUNCTION {schema}.complete_jobs(
    p_worker uuid, p_ids uuid[], p_attempts int[], p_results jsonb[])
RETURNS uuid[] LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_done  uuid[];
    v_freed boolean;
BEGIN
    -- The history rows are written by this statement itself, and the jobs_updated trigger skips
    -- it: the trigger's work on claims and completions was about a third of a drain's time.
    PERFORM set_config('jobmaster.history_written', 'on', true);
    WITH
    -- The batch's jobs, found by primary key (job_id = ANY). "Held by this worker" is written
    -- with IS NOT DISTINCT FROM, which no index serves (same meaning: both columns are set on
    -- these rows). With "=", a queue's ever-stale statistics ("this worker runs 1 job") made the
    -- planner walk all of the worker's running jobs and test each against the batch: quadratic
    -- once outcomes queued up, and a drain fell from 25,000 to 12,000 jobs/s. Values are found
    -- by array_position, not by a join with unnest, for the same reason: the planner would pick
    -- a nested loop over the batch; the dispatcher bounds the batch (RECORD_BATCH).
    done AS (
        UPDATE {schema}.jobs AS j
           SET status = 'complete', result = p_results[array_position(p_ids, j.job_id)],
               finished_at = now()
         WHERE j.job_id = ANY (p_ids)
           AND j.status IS NOT DISTINCT FROM 'running' AND j.worker_id IS NOT DISTINCT FROM p_worker
           AND j.attempts = p_attempts[array_position(p_ids, j.job_id)]
        RETURNING j.job_id, j.task_id, j.message
    ),
    -- the history: a 'complete' event per job
    logged AS (
        INSERT INTO {schema}.job_events (job_id, status, reason, worker_id, node, pid, message)
        SELECT d.job_id, 'complete', 'completed', p_worker, w.node, w.pid, d.message
          FROM done AS d, {schema}._event_origin(p_worker) AS w
    )
    SELECT coalesce(array_agg(d.job_id), '{}'), coalesce(bool_or(t.process_limit IS NOT NULL), false)
      INTO v_done, v_freed
      FROM done AS d LEFT JOIN {schema}.tasks AS t ON t.task_id = d.task_id;
    PERFORM set_config('jobmaster.history_written', 'off', true);
    IF v_freed THEN
        PERFORM pg_notify({channel}, 'wake');  -- a process_limit slot freed
    END IF;
    -- a later statement: its snapshot sees every dependent linked before our row locks
    PERFORM {schema}._settle(v_done);
    RETURN v_done;
END $$;


-- Records failures (fenced like complete_jobs). A job with attempts left and a retry delay goes
-- back to waiting after that delay; otherwise it fails for good and fails its dependents.
CREATE OR REPLACE FUNCTION {schema}.fail_jobs(
    p_worker uuid, p_ids uuid[], p_attempts int[], p_error_types text[], p_messages text[],
    p_tracebacks text[], p_retry_delays double precision[])
RETURNS uuid[] LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_final uuid[];
    v_all   uuid[];
BEGIN
    WITH
    -- the batch, positioned (see complete_jobs)
    batch AS (
        SELECT j.job_id, array_position(p_ids, j.job_id) AS i,
               j.attempts < j.max_attempts
                   AND p_retry_delays[array_position(p_ids, j.job_id)] IS NOT NULL AS retry
          FROM {schema}.jobs AS j
         WHERE j.job_id = ANY (p_ids)  -- held by this worker: see complete_jobs
           AND j.status IS NOT DISTINCT FROM 'running' AND j.worker_id IS NOT DISTINCT FROM p_worker
           AND j.attempts = p_attempts[array_position(p_ids, j.job_id)]
    ),
    failed AS (
        UPDATE {schema}.jobs AS j
           SET status = CASE WHEN b.retry THEN 'waiting' ELSE 'failed' END,
               run_after = now() + coalesce(p_retry_delays[b.i], 0) * interval '1 second',
               finished_at = CASE WHEN b.retry THEN NULL ELSE now() END,
               worker_id = CASE WHEN b.retry THEN NULL ELSE j.worker_id END,
               error_type = p_error_types[b.i], message = p_messages[b.i],
               traceback = p_tracebacks[b.i]
          FROM batch AS b
         WHERE j.job_id = b.job_id
        RETURNING j.job_id, j.status
    )
    SELECT coalesce(array_agg(f.job_id) FILTER (WHERE f.status = 'failed'), '{}'),
           coalesce(array_agg(f.job_id), '{}')
      INTO v_final, v_all FROM failed AS f;
    PERFORM {schema}._settle(v_final);
    RETURN v_all;
END $$;


-- Puts running jobs of a worker back to waiting (graceful shutdown). The start stays counted in
-- attempts (it never decreases: fencing) and is given back through max_attempts, so a release
-- uses up no retry.
CREATE OR REPLACE FUNCTION {schema}.release_jobs(p_worker uuid, p_ids uuid[], p_attempts int[])
RETURNS int LANGUAGE sql {entry_point} AS $$
    WITH released AS (
        UPDATE {schema}.jobs AS j
           SET status = 'waiting', worker_id = NULL, max_attempts = j.max_attempts + 1, started_at = NULL,
               run_after = now(), message = 'released by a worker shutting down'
         WHERE j.job_id = ANY (p_ids)  -- held by this worker: see complete_jobs
           AND j.status IS NOT DISTINCT FROM 'running' AND j.worker_id IS NOT DISTINCT FROM p_worker
           AND j.attempts = p_attempts[array_position(p_ids, j.job_id)]
        RETURNING 1
    )
    SELECT count(*)::int FROM released;
$$;


-- ---------------------------------------------------------------------------------------------
-- Workers: heartbeats and rescue
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION {schema}.heartbeat(
    p_worker uuid, p_node text, p_pid int, p_lapse double precision)
RETURNS void LANGUAGE sql {entry_point} AS $$
    INSERT INTO {schema}.workers AS w (worker_id, node, pid, lapse)
    VALUES (p_worker, p_node, p_pid, p_lapse * interval '1 second')
    ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now(), lapse = excluded.lapse;
$$;


-- Jobs of workers whose heartbeat lapsed (or that are gone) go back to waiting, or fail when
-- their attempts are used up. Dead worker rows are locked SKIP LOCKED: one rescuer each. Every
-- worker calls this on each poll: bitmap scans are off for the reason given at claim_jobs, and
-- jit with them (a disabled plan node costs 1e10 before PostgreSQL 18).
CREATE OR REPLACE FUNCTION {schema}.rescue_jobs()
RETURNS int LANGUAGE plpgsql {entry_point} SET enable_bitmapscan = off SET jit = off AS $$
DECLARE
    v_dead  uuid[];
    v_count int;
    v_final uuid[];
BEGIN
    SELECT coalesce(array_agg(w.worker_id), '{}') INTO v_dead
      FROM (SELECT w.worker_id FROM {schema}.workers AS w
             WHERE w.heartbeat_at < now() - w.lapse
               FOR UPDATE SKIP LOCKED) AS w;
    WITH
    -- running jobs of dead or unknown workers
    lost AS (
        SELECT j.job_id FROM {schema}.jobs AS j
         WHERE j.status = 'running'
           AND (j.worker_id = ANY (v_dead)
                OR NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.worker_id = j.worker_id))
           FOR NO KEY UPDATE OF j SKIP LOCKED
    ),
    -- put back without using up retries (the lost start gets an attempt of its own), up to the
    -- task's rescues; the next loss fails the job (a poison job stops there)
    rescued AS (
        UPDATE {schema}.jobs AS j
           SET status = CASE WHEN j.rescues < t.rescues THEN 'waiting' ELSE 'failed' END,
               finished_at = CASE WHEN j.rescues < t.rescues THEN NULL ELSE now() END,
               max_attempts = j.max_attempts + CASE WHEN j.rescues < t.rescues THEN 1 ELSE 0 END,
               rescues = j.rescues + 1,
               run_after = now(),
               message = CASE WHEN j.rescues < t.rescues
                              THEN format('worker %s lost (heartbeat lapsed) during attempt %s; put back (rescue %s of %s)',
                                          j.worker_id, j.attempts, j.rescues + 1, t.rescues)
                              ELSE format('worker %s lost (heartbeat lapsed) during attempt %s; failed: its worker was lost %s times (rescues=%s)',
                                          j.worker_id, j.attempts, j.rescues + 1, t.rescues) END
          FROM lost AS l, {schema}.tasks AS t
         WHERE j.job_id = l.job_id AND t.task_id = j.task_id
        RETURNING j.job_id, j.status
    )
    SELECT count(*)::int, coalesce(array_agg(r.job_id) FILTER (WHERE r.status = 'failed'), '{}')
      INTO v_count, v_final FROM rescued AS r;
    UPDATE {schema}.jobs SET abandoned = false WHERE abandoned AND worker_id = ANY (v_dead);
    DELETE FROM {schema}.workers WHERE worker_id = ANY (v_dead);
    PERFORM {schema}._settle(v_final);
    RETURN v_count;
END $$;


-- ---------------------------------------------------------------------------------------------
-- Cancel and retry
-- ---------------------------------------------------------------------------------------------

-- Cancels a waiting, blocked or running job (a running one's worker is told through NOTIFY);
-- an "ALL" parent takes its unfinished children along. Returns the job's status before.
CREATE OR REPLACE FUNCTION {schema}.cancel_job(p_job_id uuid)
RETURNS text LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_status   text;
    v_children uuid[];
BEGIN
    SELECT status INTO v_status FROM {schema}.jobs WHERE job_id = p_job_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_status NOT IN ('waiting', 'blocked', 'running') THEN
        RETURN v_status;
    END IF;
    WITH cancelled AS (
        UPDATE {schema}.jobs AS j
           SET status = 'cancelled', finished_at = now(), message = 'cancelled'
         WHERE j.status IN ('waiting', 'blocked', 'running')
           AND (j.job_id = p_job_id
                OR j.job_id IN (SELECT d.depends_on FROM {schema}.job_dependencies AS d
                                  JOIN {schema}.jobs AS p ON p.job_id = d.job_id
                                 WHERE d.job_id = p_job_id AND p.is_parent))
        RETURNING j.job_id
    )
    SELECT array_agg(c.job_id) INTO v_children FROM cancelled AS c;
    PERFORM {schema}._settle(v_children);
    RETURN v_status;
END $$;


-- Queues a failed or cancelled job again (same id, its task's retries afresh, dependencies
-- resolved afresh; attempts keeps counting, for fencing). If an identical job is active, its id is returned instead.
CREATE OR REPLACE FUNCTION {schema}.retry_job(p_job_id uuid)
RETURNS uuid LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_job     {schema}.jobs;
    v_task    {schema}.tasks;
    v_twin    uuid;
    v_status  text := 'waiting';
    v_failure text;
    v_plan    {schema}.plan_step[];
    v_child   uuid;
BEGIN
    SELECT * INTO v_job FROM {schema}.jobs WHERE job_id = p_job_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_job.status NOT IN ('failed', 'cancelled') THEN
        PERFORM {schema}._refuse('not_retryable',
            format('job %s is %s: only failed or cancelled jobs can be retried', p_job_id, v_job.status));
    END IF;
    v_twin := {schema}._active_twin(v_job.task_id, v_job.args_hash);
    IF v_twin IS NOT NULL THEN
        RETURN v_twin;
    END IF;
    SELECT * INTO v_task FROM {schema}.tasks WHERE task_id = v_job.task_id;

    IF v_job.is_parent THEN
        -- retry the children that did not complete; the parent waits for them again
        FOR v_child IN
            SELECT d.depends_on FROM {schema}.job_dependencies AS d
              JOIN {schema}.jobs AS x ON x.job_id = d.depends_on
             WHERE d.job_id = p_job_id AND x.status IN ('failed', 'cancelled')
        LOOP
            v_twin := {schema}.retry_job(v_child);
            IF v_twin <> v_child THEN
                -- an identical active job stands in for the child: checked at commit (_check_link)
                DELETE FROM {schema}.job_dependencies WHERE job_id = p_job_id AND depends_on = v_child;
                INSERT INTO {schema}.job_dependencies (job_id, depends_on, check_at_commit)
                VALUES (p_job_id, v_twin, true) ON CONFLICT DO NOTHING;
            END IF;
        END LOOP;
        v_status := 'blocked';  -- until _settle moves it
    ELSIF jsonb_array_length(v_task.dependencies) > 0 THEN
        DELETE FROM {schema}.job_dependencies WHERE job_id = p_job_id;
        v_plan := {schema}._plan_dependencies(v_task, v_job.priority, ARRAY[v_job.arguments]);
        SELECT v.status, v.failure INTO v_status, v_failure FROM {schema}._plan_verdicts(v_plan) AS v;
    END IF;

    UPDATE {schema}.jobs
       SET status = v_status,
           max_attempts = v_job.attempts + v_task.retries + 1, run_after = now(),
           started_at = NULL, finished_at = CASE WHEN v_failure IS NOT NULL THEN now() END,
           worker_id = NULL, result = NULL, error_type = NULL, traceback = NULL,
           message = coalesce(v_failure, 'retried')
     WHERE job_id = p_job_id;
    IF NOT v_job.is_parent AND v_status = 'blocked' THEN
        PERFORM {schema}._carry_out_plan(v_plan, ARRAY[p_job_id]);
    END IF;
    RETURN p_job_id;
END $$;


-- ---------------------------------------------------------------------------------------------
-- Triggers: history of every status change, NOTIFY when jobs become runnable
-- ---------------------------------------------------------------------------------------------

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


-- History and NOTIFY of inserted jobs. The library's plain hot-path statements (queries.sql
-- insert_job_fast, claim_jobs_fast) and complete_jobs write their own history rows, set-based,
-- and say so with the transaction-local setting jobmaster.history_written, which makes these
-- triggers skip them. Only the library's own statements on its own connections can leave it on
-- for a trigger: every SQL entry point sets it off for its duration ({entry_point}), and so does
-- the check at commit of a client's links (_check_link), so a client that sets it (the insert-only
-- web role calling add_job) suppresses nothing.
CREATE OR REPLACE FUNCTION {schema}._jobs_inserted()
RETURNS trigger LANGUAGE plpgsql {search_path} AS $$
BEGIN
    -- the statement wrote its own history and NOTIFY (queries.sql insert_job_fast)
    IF current_setting('jobmaster.history_written', true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO {schema}.job_events (job_id, status, reason, node, pid, message)
    SELECT n.job_id, n.status, 'inserted', w.node, w.pid, n.message
      FROM new_jobs AS n, {schema}._event_origin(NULL) AS w;
    IF EXISTS (SELECT 1 FROM new_jobs WHERE status = 'waiting') THEN
        PERFORM pg_notify({channel}, 'wake');
    END IF;
    RETURN NULL;
END $$;


CREATE OR REPLACE FUNCTION {schema}._jobs_updated()
RETURNS trigger LANGUAGE plpgsql {search_path} AS $$
DECLARE
    v_wake      boolean;
    v_cancelled uuid[];
    v_job_id    uuid;
BEGIN
    -- the statement wrote its own history (the plain claim, complete_jobs)
    IF current_setting('jobmaster.history_written', true) = 'on' THEN
        RETURN NULL;
    END IF;
    WITH
    -- rows whose status changed in this statement, and why (told apart by what else changed:
    -- a rescue counts a rescue, a release gives the start back through max_attempts)
    changes AS (
        SELECT n.job_id, n.task_id, n.status, o.status AS old_status,
               coalesce(n.worker_id, o.worker_id) AS worker_id, n.message,
               CASE WHEN n.status = 'running' THEN 'claimed'
                    WHEN n.status = 'complete' THEN 'completed'
                    WHEN n.status = 'cancelled' THEN 'cancelled'
                    WHEN n.status = 'failed' THEN 'failed'
                    WHEN o.status = 'running' AND n.rescues > o.rescues THEN 'rescued'
                    WHEN o.status = 'running' AND n.max_attempts > o.max_attempts THEN 'released'
                    WHEN o.status = 'running' THEN 'retried'
                    WHEN o.status = 'blocked' THEN 'unblocked'
                    WHEN o.status IN ('failed', 'cancelled') THEN 'requeued'
                    ELSE n.status END AS reason
          FROM new_jobs AS n JOIN old_jobs AS o ON o.job_id = n.job_id
         WHERE n.status <> o.status
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
           array_agg(c.job_id) FILTER (WHERE c.old_status = 'running' AND c.status = 'cancelled')
      INTO v_wake, v_cancelled
      FROM changes AS c
      LEFT JOIN {schema}.tasks AS t ON c.old_status = 'running' AND t.task_id = c.task_id;
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


-- ---------------------------------------------------------------------------------------------
-- For people in psql
-- ---------------------------------------------------------------------------------------------

-- How many jobs wait, are blocked, and run: a queue's depth, cheap however many finished jobs
-- the table keeps. Each count reads a partial index that holds exactly those jobs:
-- jobs_dedupe_idx (all three), one of the claim indexes (waiting), jobs_running_idx (running);
-- blocked is the difference, exact because one statement sees one snapshot. Until vacuum,
-- finished jobs leave dead entries in those indexes. A bitmap scan, which the planner picks on
-- most statistics, visits the table for each of them on every call (16 ms with 120,000 finished
-- jobs); an index-only scan marks each dead entry once and skips it afterwards (under 1 ms).
-- Hence the planner settings. Live jobs still cost a visit each until vacuum marks their pages
-- all-visible (about 7 ms for 20,000 waiting jobs).
CREATE OR REPLACE FUNCTION {schema}.active_counts(OUT waiting bigint, OUT blocked bigint, OUT running bigint)
LANGUAGE sql STABLE
{search_path}
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
    WITH
    -- waiting, blocked or running: jobs_dedupe_idx
    active AS (SELECT count(*) AS n FROM {schema}.jobs WHERE status IN ('waiting', 'blocked', 'running')),
    -- waiting: jobs_claim_idx or jobs_task_claim_idx
    waiting AS (SELECT count(*) AS n FROM {schema}.jobs WHERE status = 'waiting'),
    -- running: jobs_running_idx
    running AS (SELECT count(*) AS n FROM {schema}.jobs WHERE status = 'running')
    SELECT w.n, a.n - w.n - r.n, r.n FROM active AS a, waiting AS w, running AS r
$$;


DROP VIEW IF EXISTS {schema}.job_list;
CREATE VIEW {schema}.job_list AS
SELECT j.job_id, t.type_key, t.task_key, j.status, j.priority, j.arguments, j.attempts,
       j.created_at, j.started_at, j.finished_at,
       w.node AS worker_node, w.pid AS worker_pid, j.message
  FROM {schema}.jobs AS j
  JOIN {schema}.tasks AS t ON t.task_id = j.task_id
  LEFT JOIN {schema}.workers AS w ON w.worker_id = j.worker_id
 ORDER BY j.status IN ('running', 'waiting', 'blocked') DESC, j.created_at DESC, j.seq DESC;


-- Only the SQL interface is for everyone who is granted it; nothing else is callable by PUBLIC.
REVOKE ALL ON ALL ROUTINES IN SCHEMA {schema} FROM PUBLIC;
