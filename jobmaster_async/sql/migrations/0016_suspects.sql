-- Suspects (DESIGN 9 "Lost workers"): a job put back from a lost worker is suspected of having
-- killed it until it finishes in a way that is not a loss. A rescue is charged (rescues + 1) only
-- to the only suspect running on the worker lost (or its only job, when it ran no suspect); a
-- worker runs at most one suspect at a time, so a job that kills its worker does not spend its
-- neighbours' rescues (functions/workers.sql rescue_jobs).
-- Placeholders: {schema} is the quoted schema name.

-- The worker a suspect was taken from (NULL: not a suspect). That worker's next heartbeat, if it
-- comes (an outage, not a death), clears the suspicion of its waiting jobs (functions/workers.sql).
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS suspect_of uuid;

-- Three partial indexes, empty while no worker is lost: a job enters them only as a suspect,
-- and an update of a row outside a partial index's predicate writes nothing to it.
-- The claim's one suspect: claimable suspects by priority, then age (the claim's order); every
-- plain claim asks whether one is claimable (queries.sql claim_jobs_fast: a probe of an empty index).
CREATE INDEX IF NOT EXISTS jobs_suspect_claim_idx ON {schema}.jobs (priority DESC, seq)
    WHERE status = 'waiting' AND NOT scheduled AND suspect_of IS NOT NULL;
-- Does a worker run a suspect already? (asked by claim_jobs())
CREATE INDEX IF NOT EXISTS jobs_suspect_running_idx ON {schema}.jobs (worker_id)
    WHERE status = 'running' AND suspect_of IS NOT NULL;
-- The waiting suspects taken from a worker that heartbeats again (asked by every heartbeat).
CREATE INDEX IF NOT EXISTS jobs_suspect_of_idx ON {schema}.jobs (suspect_of)
    WHERE status = 'waiting' AND suspect_of IS NOT NULL;
