-- The current schema: the tables, types, indexes, constraints and triggers that migration 0001
-- and every later one produce, written out as one would write them today. deploy() applies this
-- file to a new schema (and records every migration as applied); a schema that exists already
-- runs the migrations it lacks instead. Keep it equal to what the migrations produce:
-- tests/test_schema.py compares the two, from the catalogs, on every run. A change is a new
-- migration and the same change here (columns added by a migration go last, as they do there).
-- Placeholders: {schema} is the quoted schema name. No fragments: this is plain SQL.
--
-- Not here: the table schema_version (deploy() creates it first, to know what to do), and the
-- functions, triggers and view re-created by every deploy() (functions/*.sql): the triggers
-- jobs_inserted, jobs_updated (history and NOTIFY) and job_dependencies_check_at_commit.


-- ---------------------------------------------------------------------------------------------
-- Tasks: one row per @task, written by deploy()
-- ---------------------------------------------------------------------------------------------

CREATE TABLE {schema}.tasks (
    -- which task
    task_id            int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type_key           text NOT NULL,
    task_key           text NOT NULL,
    -- what its jobs take: [{"name", "type", "nullable", "required", "default"?, "options"?, "help"?}];
    -- the parameters that take "ALL" (a fan-out); its dependencies:
    -- [{"type_key", "task_key", "hours", "arguments": {name: {"value": v} | {"same": name, "ops": [[op, n], ...]}}}]
    parameters         jsonb NOT NULL DEFAULT '[]',
    write_all          text[] NOT NULL DEFAULT '{}',
    dependencies       jsonb NOT NULL DEFAULT '[]',
    -- how its jobs run: units of a worker's budget each, at most this many at once across all
    -- workers, retries after an error, seconds before a timeout, where they run
    process_units      int NOT NULL DEFAULT 1 CHECK (process_units >= 0),
    process_limit      int CHECK (process_limit > 0),
    retries            int NOT NULL DEFAULT 0 CHECK (retries >= 0),
    timeout            double precision CHECK (timeout > 0),
    executor           text NOT NULL DEFAULT 'thread' CHECK (executor IN ('async', 'thread', 'process')),
    -- true when some task depends on this one: its jobs' arguments are GIN-indexed for matching
    is_dependency      boolean NOT NULL DEFAULT false,
    description        text,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- derived from parameters by the trigger tasks_derive_checks (below), for the common insert:
    -- the names; the defaults as an object (canonical arguments are defaults || arguments); a
    -- jsonpath that arguments which fit match (NULL: _arguments_ok checks); whether an integer
    -- parameter exists (5.0 must be stored as 5)
    parameter_names    text[] NOT NULL DEFAULT '{}',
    defaults           jsonb NOT NULL DEFAULT '{}',
    arguments_path     jsonpath,
    has_integers       boolean NOT NULL DEFAULT false,
    -- how many times a job is put back when its worker is lost (@task(rescues=N))
    rescues            int NOT NULL DEFAULT 3 CHECK (rescues >= 0),
    -- derived too: the names of the parameters that are not integers (_fast_canonical)
    non_integer_names  text[] NOT NULL DEFAULT '{}',
    -- how long its finished jobs and their history are kept after they finished (NULL: forever);
    -- written by deploy() (functions/retention.sql prunes)
    retention          interval DEFAULT '7 days' CHECK (retention > interval '0'),
    UNIQUE (type_key, task_key)
);

-- The parameters as one jsonpath predicate that arguments without unknown keys match when they
-- fit, run by jsonb_path_match in C (tasks.arguments_path): the one rule of argument validity,
-- which _value_ok and _arguments_ok (functions/validation.sql) match too. NULL when an option is
-- an object or an array (a jsonpath compares scalars only).
CREATE FUNCTION {schema}._arguments_path(p_parameters jsonb)
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

-- Derives tasks' derived columns from their parameters, whenever a task is written.
CREATE FUNCTION {schema}._derive_task_checks()
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

CREATE TRIGGER tasks_derive_checks BEFORE INSERT OR UPDATE ON {schema}.tasks
    FOR EACH ROW EXECUTE FUNCTION {schema}._derive_task_checks();


-- ---------------------------------------------------------------------------------------------
-- Schedules: one row per Cron of a task, written by deploy() (periodic tasks)
-- ---------------------------------------------------------------------------------------------

-- A schedule: its task, what identifies it (Cron.key(): expression, time zone, arguments and
-- priority; a change of any is a new schedule), the jobs its ticks create (exactly these arguments
-- and priority), when it was created (a new schedule starts at its first tick after that), and
-- the last tick fired with the job it created or deduped into (functions/schedules.sql
-- fire_schedule: a compare-and-set on last_tick, so each tick creates one job however many workers
-- fire it). A task's schedules go with it (deploy(prune=True)).
CREATE TABLE {schema}.schedules (
    schedule_id  int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id      int NOT NULL REFERENCES {schema}.tasks ON DELETE CASCADE,
    cron_key     text NOT NULL,
    expression   text NOT NULL,
    timezone     text NOT NULL,
    arguments    jsonb NOT NULL,
    priority     int NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_tick    timestamptz,
    last_job_id  uuid,
    UNIQUE (task_id, cron_key)
);


-- ---------------------------------------------------------------------------------------------
-- Workers: one row per running worker, kept alive by its heartbeat
-- ---------------------------------------------------------------------------------------------

CREATE TABLE {schema}.workers (
    worker_id     uuid PRIMARY KEY,
    -- where it runs
    node          text NOT NULL,
    pid           int NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    -- a worker whose heartbeat is older than lapse is lost and its jobs are rescued
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    lapse         interval NOT NULL DEFAULT '30 seconds'
);


-- ---------------------------------------------------------------------------------------------
-- Jobs
-- ---------------------------------------------------------------------------------------------

-- A time-ordered job id (the layout of a version-7 UUID, RFC 9562: 48 bits of Unix
-- milliseconds, then the version, the variant and 74 random bits), so the jobs of one moment sit
-- together in the indexes; built from gen_random_uuid(), since uuidv7() is PostgreSQL 18 only.
-- Ids stay unguessable and are plain uuids: nothing may read meaning into their order. Every
-- built-in is qualified: the plain insert evaluates this default with the caller's search_path.
CREATE FUNCTION {schema}._new_job_id() RETURNS uuid
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

CREATE TABLE {schema}.jobs (
    -- which job: its id; its insertion order ("oldest first"); its task (no foreign key: jobs
    -- are inserted only by this schema's functions, which look their task up first, and
    -- deleting tasks deletes their finished jobs, queries.sql prune_tasks)
    job_id         uuid PRIMARY KEY DEFAULT {schema}._new_job_id(),
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    task_id        int NOT NULL,
    priority       int NOT NULL DEFAULT 0,
    -- its canonical arguments (defaults filled in) and their md5, for dedupe
    arguments      jsonb NOT NULL,
    args_hash      uuid NOT NULL,
    status         text NOT NULL CHECK (status IN
                       ('waiting', 'blocked', 'running', 'complete', 'failed', 'cancelled')),
    -- an "ALL" fan-out parent (never claimed); copied from tasks.is_dependency; cancelled while
    -- its thread still runs
    is_parent      boolean NOT NULL DEFAULT false,
    is_dependency  boolean NOT NULL DEFAULT false,
    abandoned      boolean NOT NULL DEFAULT false,
    -- starts so far (releases and rescues included; never decreases: fencing)
    attempts       int NOT NULL DEFAULT 0,
    -- when: runnable from; inserted; started (this attempt); finished
    run_after      timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    -- who runs it, and how it ended
    worker_id      uuid,
    result         jsonb,
    message        text,
    error_type     text,
    traceback      text,
    -- how many times it was put back because its worker was lost
    rescues        int NOT NULL DEFAULT 0,
    -- the time its inserter asked it to run at (NULL: none); run_after is when it may run
    run_at         timestamptz,
    -- waiting, and not due when it was written (run_after in the future): out of the claim
    -- indexes, in jobs_scheduled_idx, until promote_due_jobs() clears the flag once it is due
    scheduled      boolean NOT NULL DEFAULT false,
    -- the W3C trace context it was inserted in: {"traceparent": ..., "tracestate": ...} (NULL: none)
    trace_context  jsonb,
    -- a suspect: put back from a lost worker (this one), it may have killed it (NULL: not one)
    suspect_of     uuid,
    -- the starts that count against the task's retries since the job was (re)queued: a claim
    -- adds one, a release or a rescue gives it back, a requeue starts again at 0 (migration 0017)
    tries          int NOT NULL DEFAULT 0,
    -- the reason the last transition function gave for the status (NULL: plain SQL wrote it):
    -- how the history trigger tells a client's plain SQL (functions/triggers.sql)
    reason         text
) WITH (
    -- autovacuum fit for a queue: the reasons are in migrations/0014_retention.sql
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000
);

-- The claim: claimable jobs by priority, then age; the same per task, for claims that respect
-- process_limit and process_units. Scheduled jobs are not in them, so that a claim costs the
-- same however many jobs wait for a future time; those are found by time.
CREATE INDEX jobs_claim_idx ON {schema}.jobs (priority DESC, seq) WHERE status = 'waiting' AND NOT scheduled;
CREATE INDEX jobs_task_claim_idx ON {schema}.jobs (task_id, priority DESC, seq)
    WHERE status = 'waiting' AND NOT scheduled;
CREATE INDEX jobs_scheduled_idx ON {schema}.jobs (run_after) WHERE status = 'waiting' AND scheduled;
-- Race-free dedupe of identical active jobs (fragments.sql unless_active_twin names it).
CREATE UNIQUE INDEX jobs_dedupe_idx ON {schema}.jobs (task_id, args_hash)
    WHERE status IN ('waiting', 'blocked', 'running');
-- Dependency matching: arguments containment, only for tasks that something depends on.
CREATE INDEX jobs_dependency_args_idx ON {schema}.jobs USING gin (arguments jsonb_path_ops)
    WHERE is_dependency;
-- Running jobs per task (process_limit counts, rescue), and abandoned ones.
CREATE INDEX jobs_running_idx ON {schema}.jobs (task_id) WHERE status = 'running';
CREATE INDEX jobs_abandoned_idx ON {schema}.jobs (task_id) WHERE abandoned;
-- Finished jobs of a task, oldest first: what pruning walks (functions/retention.sql).
CREATE INDEX jobs_finished_idx ON {schema}.jobs (task_id, finished_at)
    WHERE status IN ('complete', 'failed', 'cancelled');
-- Suspects (migration 0016 says why one index): the claimable ones in the claim's order, those a
-- worker runs, those taken from a worker. Empty while no worker is lost.
CREATE INDEX jobs_suspects_idx ON {schema}.jobs (status, priority DESC, seq, suspect_of)
    WHERE suspect_of IS NOT NULL;


-- ---------------------------------------------------------------------------------------------
-- Dependencies
-- ---------------------------------------------------------------------------------------------

-- Edges of the dependency graph: job_id waits for depends_on. check_at_commit: the link is to a
-- job that existed before the linking transaction, checked when it commits
-- (functions/triggers.sql, _check_link).
CREATE TABLE {schema}.job_dependencies (
    job_id           uuid NOT NULL REFERENCES {schema}.jobs ON DELETE CASCADE,
    depends_on       uuid NOT NULL REFERENCES {schema}.jobs ON DELETE CASCADE,
    check_at_commit  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX job_dependencies_depends_on_idx ON {schema}.job_dependencies (depends_on);

-- One step of a plan for inserting a batch: a job that inserting it needs, and what to do about
-- it (functions/dependencies.sql, _plan_dependencies).
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


-- ---------------------------------------------------------------------------------------------
-- History
-- ---------------------------------------------------------------------------------------------

-- Every status change of every job, and why (reason: inserted, claimed, completed, failed,
-- retried, rescued, released, cancelled, unblocked, requeued; NULL before migration 0009), with
-- where it happened (the worker's node and pid, else the client's). No primary key: nothing
-- looks an event up by event_id alone; job_events_job_idx serves a job's history.
CREATE TABLE {schema}.job_events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY,
    job_id      uuid NOT NULL,
    status      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    worker_id   uuid,
    node        text,
    pid         int,
    message     text,
    reason      text
) WITH (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_limit = 2000
);
CREATE INDEX job_events_job_idx ON {schema}.job_events (job_id, event_id);
-- The history by time (the dashboard's charts, the metrics); a B-tree: migrations/0014 says why.
CREATE INDEX job_events_at_idx ON {schema}.job_events (at);
