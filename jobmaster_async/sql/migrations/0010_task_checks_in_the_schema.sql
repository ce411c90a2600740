-- The checks derived from a task's parameters (migration 0003) belong to the schema: their
-- trigger and its functions are created here, no longer by every deploy(), and every task is
-- derived again here, once. A change to the derivation is a later migration that replaces these
-- functions and derives every task again (a backfill lives in a migration, never in functions/).
-- Placeholders: {schema} is the quoted schema name.

-- The names of the parameters that are not integers. The arguments without them hold only the
-- values of integer parameters, which show whether one was given as 5.0 (to be stored as 5) on
-- their own, so a dot in a string, a float or an object of another parameter costs nothing
-- (functions/validation.sql, _fast_canonical). Until derived, '{}': then every value is looked
-- at, which is still right.
ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS non_integer_names text[] NOT NULL DEFAULT '{}';

-- The parameters as one jsonpath predicate that arguments without unknown keys match when they
-- fit (JSON types, whole integers, nullability, options, required ones present): the same rules
-- as _arguments_ok, but run by jsonb_path_match in C, so a bulk insert checks its elements
-- without a PL/pgSQL loop each. NULL when an option is not a scalar (then _arguments_ok checks).
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


-- Derives what inserting needs from a task's parameters (the columns of migration 0003).
CREATE OR REPLACE FUNCTION {schema}._derive_task_checks()
RETURNS trigger LANGUAGE plpgsql {search_path} AS $$
BEGIN
    SELECT coalesce(array_agg(p.value->>'name'), '{}'),
           coalesce(jsonb_object_agg(p.value->>'name', p.value->'default')
                        FILTER (WHERE p.value ? 'default'), '{}'),
           coalesce(bool_or(p.value->>'type' = 'integer'), false),
           coalesce(array_agg(p.value->>'name') FILTER (WHERE p.value->>'type' IS DISTINCT FROM 'integer'), '{}')
      INTO NEW.parameter_names, NEW.defaults, NEW.has_integers, NEW.non_integer_names
      FROM jsonb_array_elements(NEW.parameters) AS p;
    NEW.arguments_path := {schema}._arguments_path(NEW.parameters);
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS tasks_derive_checks ON {schema}.tasks;
CREATE TRIGGER tasks_derive_checks BEFORE INSERT OR UPDATE ON {schema}.tasks
    FOR EACH ROW EXECUTE FUNCTION {schema}._derive_task_checks();

-- Every task derived again, once, by these functions.
UPDATE {schema}.tasks SET parameters = parameters;
