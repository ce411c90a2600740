-- Initial schema. Placeholders: {schema} is the quoted schema name.
-- Functions, triggers and views live in functions/ and are (re)created on every deploy().

CREATE TABLE {schema}.tasks (
    task_id        int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type_key       text NOT NULL,
    task_key       text NOT NULL,
    -- [{"name", "type", "nullable", "required", "default"?, "options"?, "help"?}]
    parameters     jsonb NOT NULL DEFAULT '[]',
    write_all      text[] NOT NULL DEFAULT '{}',
    -- [{"type_key", "task_key", "hours", "arguments": {name: {"value": v} | {"same": name, "ops": [[op, n], ...]}}}]
    dependencies   jsonb NOT NULL DEFAULT '[]',
    process_units  int NOT NULL DEFAULT 1 CHECK (process_units >= 0),
    process_limit  int CHECK (process_limit > 0),
    retries        int NOT NULL DEFAULT 0 CHECK (retries >= 0),
    timeout        double precision CHECK (timeout > 0),
    executor       text NOT NULL DEFAULT 'thread' CHECK (executor IN ('async', 'thread', 'process')),
    -- true when some task depends on this one: its jobs' arguments are GIN-indexed for matching
    is_dependency  boolean NOT NULL DEFAULT false,
    description    text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (type_key, task_key)
);

CREATE TABLE {schema}.workers (
    worker_id     uuid PRIMARY KEY,
    node          text NOT NULL,
    pid           int NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    -- a worker whose heartbeat is older than this is dead and its jobs are rescued
    lapse         interval NOT NULL DEFAULT '30 seconds'
);

CREATE TABLE {schema}.jobs (
    job_id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq            bigint GENERATED ALWAYS AS IDENTITY,   -- insertion order: "oldest first"
    task_id        int NOT NULL REFERENCES {schema}.tasks ON DELETE CASCADE,
    priority       int NOT NULL DEFAULT 0,
    arguments      jsonb NOT NULL,                         -- canonical: defaults filled in
    args_hash      uuid NOT NULL,                          -- md5 of the canonical arguments
    status         text NOT NULL CHECK (status IN
                       ('waiting', 'blocked', 'running', 'complete', 'failed', 'cancelled')),
    is_parent      boolean NOT NULL DEFAULT false,         -- "ALL" fan-out parent: never claimed
    is_dependency  boolean NOT NULL DEFAULT false,         -- copied from tasks.is_dependency
    abandoned      boolean NOT NULL DEFAULT false,         -- cancelled, but its thread still runs
    attempts       int NOT NULL DEFAULT 0,                 -- starts so far, rescues included
    max_attempts   int NOT NULL DEFAULT 1,                 -- retries + 1
    run_after      timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    worker_id      uuid,
    result         jsonb,
    message        text,
    error_type     text,
    traceback      text
);

-- The claim query: runnable jobs by priority, then age.
CREATE INDEX jobs_claim_idx ON {schema}.jobs (priority DESC, seq) WHERE status = 'waiting';
-- The same per task: claims that respect process_limit and process_units.
CREATE INDEX jobs_task_claim_idx ON {schema}.jobs (task_id, priority DESC, seq)
    WHERE status = 'waiting';
-- Race-free dedupe of identical active jobs.
CREATE UNIQUE INDEX jobs_dedupe_idx ON {schema}.jobs (task_id, args_hash)
    WHERE status IN ('waiting', 'blocked', 'running');
-- Dependency matching: arguments containment, only for tasks that something depends on.
CREATE INDEX jobs_dependency_args_idx ON {schema}.jobs USING gin (arguments jsonb_path_ops)
    WHERE is_dependency;
-- Running jobs per worker (fencing, rescue) and per task (process_limit counts).
CREATE INDEX jobs_running_idx ON {schema}.jobs (worker_id, task_id) WHERE status = 'running';
CREATE INDEX jobs_abandoned_idx ON {schema}.jobs (task_id) WHERE abandoned;

-- Edges of the dependency graph: job_id waits for depends_on.
CREATE TABLE {schema}.job_dependencies (
    job_id      uuid NOT NULL REFERENCES {schema}.jobs ON DELETE CASCADE,
    depends_on  uuid NOT NULL REFERENCES {schema}.jobs ON DELETE CASCADE,
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX job_dependencies_depends_on_idx ON {schema}.job_dependencies (depends_on);

-- Every status change of every job.
CREATE TABLE {schema}.job_events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      uuid NOT NULL,
    status      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    worker_id   uuid,
    node        text,
    pid         int,
    message     text
);
CREATE INDEX job_events_job_idx ON {schema}.job_events (job_id, event_id);
