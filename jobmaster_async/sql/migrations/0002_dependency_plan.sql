-- Dependencies are resolved set-based: one recursive query plans the whole tree of a batch,
-- one statement carries the plan out (functions/dependencies.sql: _plan_dependencies, _carry_out_plan).
-- Placeholders: {schema} is the quoted schema name.

-- One step of a plan: a job that inserting a batch needs, and what to do about it.
CREATE TYPE {schema}.plan_step AS (
    root         int,     -- the requested job this step serves: its position in the batch
    depth        int,     -- 0: the requested job itself; n: a dependency n levels below it
    parent_task  int,     -- the dependent's task and arguments hash (NULL at depth 0)
    parent_hash  uuid,
    task_id      int,
    arguments    jsonb,   -- the canonical arguments the job is created with
    args_hash    uuid,
    priority     int,
    kind         text,    -- new | twin | pending | satisfied | fan_out | failed
    match        uuid,    -- twin and pending: the existing job
    failure      text     -- failed: why the job cannot be created
);

-- The per-dependency PL/pgSQL resolution these replace.
DROP FUNCTION IF EXISTS {schema}._resolve_dependencies({schema}.tasks, int, jsonb, int);
DROP FUNCTION IF EXISTS {schema}._specified_arguments(jsonb, {schema}.tasks, jsonb);
DROP FUNCTION IF EXISTS {schema}._insert_job(text, text, int, jsonb, int, boolean);
DROP FUNCTION IF EXISTS {schema}._fan_out({schema}.tasks, int, jsonb, int);
