-- What inserting a job needs of its task's parameters, derived from them whenever they change
-- (trigger tasks_derive_checks, since migration 0010), so the common insert checks its arguments in
-- one expression. Placeholders: {schema} is the quoted schema name.

ALTER TABLE {schema}.tasks
    ADD COLUMN IF NOT EXISTS parameter_names text[] NOT NULL DEFAULT '{}',
    -- the defaults, as an object: canonical arguments are defaults || arguments
    ADD COLUMN IF NOT EXISTS defaults jsonb NOT NULL DEFAULT '{}',
    -- arguments that fit match it (_arguments_path); NULL: _arguments_ok checks
    ADD COLUMN IF NOT EXISTS arguments_path jsonpath,
    -- an integer parameter: 5.0 must be stored as 5
    ADD COLUMN IF NOT EXISTS has_integers boolean NOT NULL DEFAULT false;
