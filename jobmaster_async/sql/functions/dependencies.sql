-- Dependencies: the plan of a batch's dependency tree, carrying it out, and settling the
-- dependents of finished jobs.
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


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
    IF {schema}._arguments_ok(p_dep_task, creation, false) THEN
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
-- checked at commit instead (_check_link), which also raises that job's priority. The jobs
-- created are stored with the trace context of their dependents, p_trace_context.
CREATE OR REPLACE FUNCTION {schema}._carry_out_plan(
    p_plan {schema}.plan_step[], p_root_ids uuid[], p_trace_context jsonb)
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
            v_step.priority, v_step.arguments, NULL, p_trace_context);
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
                                            is_dependency, trace_context)
            SELECT n.task_id, max(n.priority), n.arguments, n.args_hash,
                   CASE WHEN EXISTS (SELECT 1 FROM steps AS c
                                      WHERE c.parent_task = n.task_id AND c.parent_hash = n.args_hash)
                        THEN 'blocked' ELSE 'waiting' END,
                   t.is_dependency, p_trace_context
              FROM steps AS n
              JOIN {schema}.tasks AS t ON t.task_id = n.task_id
             WHERE n.kind = 'new'
               AND NOT (n.task_id, n.args_hash) IN (SELECT * FROM unnest(v_tasks, v_hashes))
             GROUP BY n.task_id, n.args_hash, n.arguments, t.is_dependency
            {fragment:unless_active_twin}
            RETURNING j.job_id, j.task_id, j.args_hash
        )
        SELECT v_tasks || coalesce(array_agg(c.task_id), '{}'), v_hashes || coalesce(array_agg(c.args_hash), '{}'),
               v_ids || coalesce(array_agg(c.job_id), '{}')
          INTO v_tasks, v_hashes, v_ids
          FROM created AS c;

        -- a later statement, whose snapshot sees the identical jobs that made us skip
        WITH
        -- the steps to carry out, as above
        steps AS (
            SELECT s.* FROM unnest(p_plan) AS s
             WHERE s.depth > 0 AND s.kind IN ('new', 'pending') AND p_root_ids[s.root] IS NOT NULL
        ),
        -- the dependencies created so far (by this statement's predecessors in the loop)
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

-- Moves the dependents of jobs that just reached a final status: a dependency failed or was
-- cancelled -> failed (final, transitively); all dependencies complete -> waiting (scheduled if
-- its run_at is still ahead), or complete for an "ALL" parent (whose own dependents are then
-- settled in the next round). Writes their history (reasons failed, completed, unblocked) and
-- wakes the workers when jobs became runnable.
CREATE OR REPLACE FUNCTION {schema}._settle(p_finished uuid[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_wake boolean;
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
        -- the dependents that can move, moved (a transition: the reason is given)
        changed AS (
            UPDATE {schema}.jobs AS j
               SET status = CASE WHEN v.failed_dependency IS NOT NULL THEN 'failed'
                                 WHEN j.is_parent THEN 'complete'
                                 ELSE 'waiting' END,
                   reason = CASE WHEN v.failed_dependency IS NOT NULL THEN 'failed'
                                 WHEN j.is_parent THEN 'completed'
                                 ELSE 'unblocked' END,
                   finished_at = CASE WHEN v.failed_dependency IS NOT NULL OR j.is_parent
                                      THEN now() END,
                   message = CASE WHEN v.failed_dependency IS NOT NULL
                                  THEN 'dependency ' || v.failed_dependency END,
                   run_after = greatest(now(), j.run_at),
                   scheduled = v.failed_dependency IS NULL AND NOT j.is_parent
                               AND coalesce(j.run_at > now(), false)
              FROM verdicts AS v
             WHERE j.job_id = v.job_id AND j.status = 'blocked'
               AND (v.failed_dependency IS NOT NULL OR v.all_complete)
            RETURNING j.job_id, j.status, j.reason, j.worker_id, j.message
        ),
        -- the history: an event per dependent moved
        logged AS (
            {fragment:history}
        )
        SELECT coalesce(array_agg(m.job_id) FILTER (WHERE m.status <> 'waiting'), '{}'),
               coalesce(bool_or(m.status = 'waiting'), false)
          INTO p_finished, v_wake FROM changed AS m;
        IF v_wake THEN
            PERFORM pg_notify({channel}, 'wake');  -- jobs became runnable
        END IF;
    END LOOP;
END $$;
