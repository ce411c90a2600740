-- Suspects (DESIGN 9 "Lost workers"): a job put back from a lost worker is suspected of having
-- killed it until it finishes in a way that is not a loss. A rescue is charged (rescues + 1) only
-- to the only suspect running on the worker lost (or its only job, when it ran no suspect); a
-- worker runs at most one suspect at a time, so a job that kills its worker does not spend its
-- neighbours' rescues (functions/workers.sql rescue_jobs).
-- Placeholders: {schema} is the quoted schema name.

-- The worker a suspect was taken from (NULL: not a suspect). That worker's next heartbeat, if it
-- comes (an outage, not a death), clears the suspicion of its waiting jobs (functions/workers.sql).
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS suspect_of uuid;

-- The suspects, in one partial index that is empty while no worker is lost: a job enters it only
-- as a suspect (an update of a row outside a partial index's predicate writes nothing to it), and
-- one index, not one per question, so that the other statements on jobs pay for one more index
-- only (each is opened by every write, and weighed by the planner for every scan of jobs). By
-- status, then the claim's order: whether a suspect is claimable (every plain claim asks,
-- queries.sql claim_jobs_fast) and which (claim_jobs()); whether a worker runs one
-- (claim_jobs()); the waiting ones taken from a worker that heartbeats again (heartbeat()).
-- suspect_of ends the key so that the statements can ask for the order (status, priority DESC,
-- seq, suspect_of), which no other index gives: with sorts off, as they are in the claims, no
-- plan can read the claim indexes instead. Statistics cannot be trusted for that: until the table
-- is first analysed, suspect_of IS NOT NULL is guessed true of nearly every row, and a probe of
-- the claim index then reads every waiting job (measured: 19,500 rows read per claim).
CREATE INDEX IF NOT EXISTS jobs_suspects_idx ON {schema}.jobs (status, priority DESC, seq, suspect_of)
    WHERE suspect_of IS NOT NULL;
