-- Retention and a queue's storage (DESIGN 9 "Retention"): how long each task's finished jobs are
-- kept, an index that finds the oldest finished jobs of a task, a time index on the history, and
-- autovacuum settings fit for a queue. Placeholders: {schema} is the quoted schema name.

-- How long a task's finished jobs (complete, failed, cancelled) and their history are kept after
-- they finished: written by deploy() (@task(retention=...), else JobMaster(retention=...));
-- NULL keeps them forever. Existing tasks get the default until their next deploy.
ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS retention interval DEFAULT '7 days'
    CHECK (retention > interval '0');

-- Pruning (functions/retention.sql) walks each task's finished jobs oldest first. A job enters
-- this index once, when it finishes: a finishing update changes status, which no update keeps
-- HOT (the claim indexes' predicates name it), so every index is written then anyway.
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON {schema}.jobs (task_id, finished_at)
    WHERE status IN ('complete', 'failed', 'cancelled');

-- The history by time, for the dashboard's charts and the metrics (the last hour of events, the
-- events since the last scrape). A B-tree, not BRIN: once pruning frees old pages, new rows fill
-- them, and a BRIN range's summary only widens, so it would soon narrow nothing down (measured:
-- 3,240 of 4,392 pages read for the last minutes). Appended at its right edge, it cost the drain
-- nothing measurable (benchmarks/README.md).
CREATE INDEX IF NOT EXISTS job_events_at_idx ON {schema}.job_events (at);

-- Autovacuum for a queue. The defaults (vacuum once 20 % of a table is dead) suit tables that
-- mostly grow. A queue's jobs table is small at its live end and churns: each job is inserted,
-- updated at least twice and deleted by pruning, and the claim, dedupe and running indexes are
-- partial indexes over a few live rows, whose dead entries every claim and count must step over
-- until vacuum removes them. With a large history of finished jobs, 20 % of the table is
-- millions of dead entries. So vacuum runs after 1 % of the table (plus 1,000 rows) is dead,
-- and may do more work per round (a cost limit of 2,000 instead of 200: the 200 of the defaults
-- is shared by all tables and lets a busy queue outrun it), and the table is analysed more
-- often, so the planner knows how few jobs wait. Inserts trigger a vacuum too (after 2 %), which
-- keeps pages all-visible for the index-only counts of active_counts().
-- The history only grows until pruning deletes from its old end: dead rows come in batches from
-- pruning, so the same scale factors keep it from bloating between prunes.
ALTER TABLE {schema}.jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000
);
ALTER TABLE {schema}.job_events SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_limit = 2000
);
