-- Links are checked at commit. Placeholders: {schema} is the quoted schema name.

-- Linking a job to a dependency that already exists takes no lock (a worker must never wait on a
-- client's open transaction, and a web app may call add_job inside a long one). Such a link is
-- checked when its transaction commits instead: the deferred constraint trigger
-- job_dependencies_check_at_commit (functions/triggers.sql, _check_link) runs only for the links that
-- carry this flag; links to jobs created in the same transaction need no check.
ALTER TABLE {schema}.job_dependencies
    ADD COLUMN IF NOT EXISTS check_at_commit boolean NOT NULL DEFAULT false;
