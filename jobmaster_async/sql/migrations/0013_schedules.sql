-- Periodic tasks (DESIGN 9 "Periodic tasks"): the schedules deploy() stores, one row per Cron of a
-- task, and what each fired last. Placeholders: {schema} is the quoted schema name.

-- A schedule: its task, what identifies it (Cron.key(): expression, time zone, arguments and
-- priority; a change of any is a new schedule), the jobs its ticks create (exactly these arguments
-- and priority), when it was created (a new schedule starts at its first tick after that), and
-- the last tick fired with the job it created or deduped into (functions/schedules.sql
-- fire_schedule: a compare-and-set on last_tick, so each tick creates one job however many workers
-- fire it). A task's schedules go with it (deploy(prune=True)).
CREATE TABLE IF NOT EXISTS {schema}.schedules (
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
