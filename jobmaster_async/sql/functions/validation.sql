-- Validation: a job's arguments checked against its task's parameters and made canonical.
-- Refusals of bad input raise SQLSTATE JM400 with DETAIL naming the kind of refusal.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


CREATE OR REPLACE FUNCTION {schema}._refuse(p_kind text, p_message text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'JM400', MESSAGE = p_message, DETAIL = p_kind;
END $$;


-- run_at's range (README "Security"; jobmaster_async/times.py states the same bounds and says
-- why): from 1970-01-01 00:00 UTC up to, not including, 9999-12-31 00:00 UTC. Every client can
-- read such a time back (Python's datetime stops at 9999-12-31, and a day is kept for time zones);
-- a run_at in the past runs at once, so the earlier bound takes nothing real away and refuses
-- typos (BC years, the year 1). infinity and -infinity are outside. NULL (now) always fits; so
-- does any time near now. Fixed bounds, not "so many years from now": Python refuses the same
-- values whatever the clocks say. (Inlined into the plain insert statement, which runs with
-- the caller's search_path: the operators used match pg_catalog's exactly.)
CREATE OR REPLACE FUNCTION {schema}._run_at_ok(p_run_at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_run_at IS NULL
        OR (p_run_at >= '1970-01-01 00:00:00+00'::timestamptz AND p_run_at < '9999-12-31 00:00:00+00'::timestamptz)
$$;


-- Why a run_at is refused, naming the task (NULL: it fits _run_at_ok's range). The callers raise
-- it (JM400, invalid_run_at) themselves, as close to the entry point as they can.
CREATE OR REPLACE FUNCTION {schema}._run_at_refusal(p_label text, p_run_at timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN NOT {schema}._run_at_ok(p_run_at) THEN
               format('%s: run_at must be from 1970-01-01 to 9999-12-31 UTC (that day excluded), got %s',
                      p_label, p_run_at)
           END
$$;


-- Does a value fit its parameter (JSON type, nullability, options)? The rule is written once, as
-- the jsonpath that schema.sql _arguments_path builds from parameters (tasks.arguments_path, which
-- the fast path matches whole arguments against): here, the path of this one parameter, matched
-- against this one value. Only what a jsonpath cannot say is said here: a value among options
-- that are objects or arrays (jsonpath compares scalars only; _arguments_path gives no path
-- then), checked for its type by the path of the parameter without its options. Used where the
-- task's path does not decide (_arguments_ok) and to say what is wrong (_value_refusal).
CREATE OR REPLACE FUNCTION {schema}._value_ok(p_param jsonb, p_value jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN x.path IS NOT NULL THEN coalesce(jsonb_path_match(x.arguments, x.path, '{}', true), false)
        ELSE coalesce(jsonb_path_match(x.arguments, {schema}._arguments_path(jsonb_build_array(p_param - 'default' - 'options')),
                                       '{}', true), false)
             AND (jsonb_typeof(p_value) = 'null'
                  OR EXISTS (SELECT 1 FROM jsonb_array_elements(p_param->'options') AS o WHERE o.value = p_value))
    END
      FROM (SELECT jsonb_build_object(p_param->>'name', p_value) AS arguments,
                   {schema}._arguments_path(jsonb_build_array(p_param - 'default')) AS path) AS x
$$;


-- The canonical spelling of a value that fits: 5.0 for an integer parameter is 5.
-- (Inlined into the plain insert statement through _fast_canonical, which runs with the caller's
-- search_path: built-ins are qualified.)
CREATE OR REPLACE FUNCTION {schema}._canonical_value(p_param jsonb, p_value jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_param->>'type' = 'integer' AND pg_catalog.jsonb_typeof(p_value) = 'number'
                THEN pg_catalog.to_jsonb(pg_catalog.trunc(p_value::numeric)) ELSE p_value END
$$;


-- Do a job's arguments fit its task: an object, no unknown key, every value fitting its parameter
-- (_value_ok's rule: the task's jsonpath), nothing required missing; with p_allow_all, "ALL" for
-- a write_all parameter? The one decision of the slow paths (the fast path, _fast_canonical,
-- matches the same jsonpath). The task's path decides when there is one and no "ALL" to allow;
-- otherwise each parameter is asked by _value_ok.
CREATE OR REPLACE FUNCTION {schema}._arguments_ok(p_task {schema}.tasks, p_arguments jsonb, p_allow_all boolean)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN jsonb_typeof(p_arguments) IS DISTINCT FROM 'object' THEN false
        WHEN p_arguments - p_task.parameter_names <> '{}' THEN false
        WHEN p_task.arguments_path IS NOT NULL
             AND NOT (p_allow_all AND EXISTS (SELECT 1 FROM unnest(p_task.write_all) AS w(name)
                                                WHERE p_arguments->w.name = '"ALL"'))
            THEN coalesce(jsonb_path_match(p_arguments, p_task.arguments_path, '{}', true), false)
        ELSE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_task.parameters) AS p
                          WHERE CASE WHEN p_arguments ? (p.value->>'name')
                                     THEN NOT ({schema}._value_ok(p.value, p_arguments->(p.value->>'name'))
                                               OR (p_allow_all AND p_arguments->(p.value->>'name') = '"ALL"'
                                                   AND p.value->>'name' = ANY (p_task.write_all)))
                                     ELSE NOT p.value ? 'default' END)
    END
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
-- bounds; then the defaults filled in. An integer given as 5.0 is made 5 the slow way: only the
-- values of integer parameters are looked at for a dot (the arguments less the other
-- parameters: non_integer_names, migration 0010), so strings, floats and objects of other
-- parameters never send arguments the slow way. jsonb writes no number with an exponent (1e2 is
-- stored as 100), so a dot is the one sign of a whole number written otherwise than canonically.
-- (Inlined into the plain insert statement, which runs with the caller's search_path: built-ins
-- are qualified; the operators used have exact matches in pg_catalog, which is searched first.)
CREATE OR REPLACE FUNCTION {schema}._fast_canonical(p_task {schema}.tasks, p_arguments jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_task.arguments_path IS NULL OR pg_catalog.jsonb_typeof(p_arguments) IS DISTINCT FROM 'object' THEN NULL
        WHEN p_arguments - p_task.parameter_names <> '{}' THEN NULL
        WHEN NOT coalesce(pg_catalog.jsonb_path_match(p_arguments, p_task.arguments_path, '{}', true), false) THEN NULL
        WHEN NOT {schema}._within_bounds(p_arguments) THEN NULL
        WHEN p_task.has_integers AND (p_arguments - p_task.non_integer_names)::text LIKE '%.%'
            THEN {schema}._canonical_of(p_task.parameters, p_arguments)
        ELSE p_task.defaults || p_arguments
    END
$$;


-- What is wrong with one argument value, naming task and argument (NULL: it fits).
CREATE OR REPLACE FUNCTION {schema}._value_refusal(p_label text, p_param jsonb, p_value jsonb)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN {schema}._value_ok(p_param, p_value) THEN NULL
        WHEN jsonb_typeof(p_value) = 'null' THEN
            format('%s: argument "%s" must not be null', p_label, p_param->>'name')
        WHEN p_param ? 'options' THEN
            format('%s: argument "%s" must be one of %s, got %s',
                   p_label, p_param->>'name', p_param->'options', p_value)
        ELSE format('%s: argument "%s" must be %s, got %s', p_label, p_param->>'name',
                    CASE p_param->>'type' WHEN 'integer' THEN 'an integer'
                                          ELSE 'a JSON ' || (p_param->>'type') END, p_value)
    END
$$;


-- Why arguments do not fit their task: {kind, message} naming task and argument, or NULL when
-- they fit ("ALL" passes for write_all parameters when p_allow_all). Refusals are raised by the
-- callers, as close to the entry point as they can (a psql user sees at most two CONTEXT lines).
CREATE OR REPLACE FUNCTION {schema}._arguments_refusal(
    p_task {schema}.tasks, p_arguments jsonb, p_allow_all boolean)
RETURNS text[] LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_label   text := p_task.type_key || '.' || p_task.task_key;
    v_param   jsonb;
    v_name    text;
    v_unknown text;
    v_failure text;
BEGIN
    p_arguments := coalesce(p_arguments, '{}');
    IF jsonb_typeof(p_arguments) = 'object' AND NOT {schema}._within_bounds(p_arguments) THEN
        SELECT a.key, {schema}._bounds_failure(a.value) INTO v_name, v_failure
          FROM jsonb_each(p_arguments) AS a
         WHERE {schema}._bounds_failure(a.value) IS NOT NULL
         ORDER BY a.key LIMIT 1;
        RETURN ARRAY['out_of_bounds', format('%s: argument "%s" %s', v_label, v_name, v_failure)];
    END IF;
    IF {schema}._arguments_ok(p_task, p_arguments, p_allow_all) THEN
        RETURN NULL;
    END IF;
    -- they do not fit (_arguments_ok decided): say why
    IF jsonb_typeof(p_arguments) <> 'object' THEN
        RETURN ARRAY['invalid_arguments',
                     format('%s: arguments must be a JSON object, got %s', v_label, p_arguments)];
    END IF;
    SELECT k INTO v_unknown
      FROM jsonb_object_keys(p_arguments) AS k
     WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_task.parameters) AS p
                        WHERE p.value->>'name' = k)
     ORDER BY k LIMIT 1;
    IF v_unknown IS NOT NULL THEN
        RETURN ARRAY['unknown_argument',
                     format('%s: unknown argument "%s" (parameters: %s)', v_label, v_unknown,
                            (SELECT coalesce(string_agg(p.value->>'name', ', '), 'none')
                               FROM jsonb_array_elements(p_task.parameters) AS p))];
    END IF;
    FOR v_param IN SELECT p.value FROM jsonb_array_elements(p_task.parameters) AS p LOOP
        v_name := v_param->>'name';
        IF p_arguments ? v_name THEN
            IF NOT (p_allow_all AND p_arguments->v_name = '"ALL"' AND v_name = ANY (p_task.write_all)) THEN
                v_failure := {schema}._value_refusal(v_label, v_param, p_arguments->v_name);
                IF v_failure IS NOT NULL THEN
                    RETURN ARRAY['invalid_argument', v_failure];
                END IF;
            END IF;
        ELSIF NOT v_param ? 'default' THEN
            RETURN ARRAY['missing_argument', format('%s: missing required argument "%s"', v_label, v_name)];
        END IF;
    END LOOP;
    -- _arguments_ok and _value_ok state one rule (the task's jsonpath): not reached
    RETURN ARRAY['invalid_arguments', format('%s: arguments %s do not fit', v_label, p_arguments)];
END $$;


-- The canonical arguments of a job (validated, defaults filled in), or why they do not fit:
-- {kind, message}. "ALL" passes for write_all parameters when p_allow_all.
CREATE OR REPLACE FUNCTION {schema}._canonical_or_refusal(
    p_task {schema}.tasks, p_arguments jsonb, p_allow_all boolean,
    OUT arguments jsonb, OUT refusal text[])
LANGUAGE plpgsql STABLE AS $$
BEGIN
    p_arguments := coalesce(p_arguments, '{}');
    arguments := {schema}._fast_canonical(p_task, p_arguments);
    IF arguments IS NULL THEN
        refusal := {schema}._arguments_refusal(p_task, p_arguments, p_allow_all);
        IF refusal IS NULL THEN
            arguments := {schema}._canonical_of(p_task.parameters, p_arguments);
        END IF;
    END IF;
END $$;


-- The canonical arguments of a job; refuses (JM400) what does not fit.
CREATE OR REPLACE FUNCTION {schema}._canonical_arguments(
    p_task {schema}.tasks, p_arguments jsonb, p_allow_all boolean)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_checked record;
BEGIN
    v_checked := {schema}._canonical_or_refusal(p_task, p_arguments, p_allow_all);
    IF v_checked.refusal IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'JM400', MESSAGE = v_checked.refusal[2], DETAIL = v_checked.refusal[1];
    END IF;
    RETURN v_checked.arguments;
END $$;
