-- Running jobs indexed by task. Placeholders: {schema} is the quoted schema name.

-- Claims of process_limit tasks count the task's running jobs, and the old index led with
-- worker_id, so every such count read the whole index. Outcomes, fencing and shutdown find
-- their jobs by primary key, and rescue reads every running job: none needs worker_id first.
-- The functions read this index with plain or index-only scans, which mark the entries of
-- finished jobs dead once; a bitmap scan visits the table for each of them on every call until
-- vacuum, so a claim of a limited task grew slower with every finished job (benchmarks/README.md).
DROP INDEX {schema}.jobs_running_idx;
CREATE INDEX jobs_running_idx ON {schema}.jobs (task_id) WHERE status = 'running';
