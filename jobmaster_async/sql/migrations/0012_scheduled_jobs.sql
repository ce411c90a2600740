-- Scheduled jobs (DESIGN 9 "Scheduled jobs"): a job's requested time, and waiting jobs that are
-- not due yet kept out of the claim's path. Placeholders: {schema} is the quoted schema name.

-- The requested time (NULL: none); run_after stays when the job may run (a retry's backoff moves it).
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS run_at timestamptz;
-- A waiting job whose run_after was in the future when it was written: it sits in
-- jobs_scheduled_idx, not in the claim indexes, until promote_due_jobs() clears the flag.
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS scheduled boolean NOT NULL DEFAULT false;
-- the retries waiting for their backoff
UPDATE {schema}.jobs SET scheduled = true WHERE status = 'waiting' AND run_after > now();

-- The claim indexes hold only claimable jobs, so that a claim costs the same with 100,000 future
-- jobs as with none; the scheduled ones are found by time.
DROP INDEX IF EXISTS {schema}.jobs_claim_idx;
DROP INDEX IF EXISTS {schema}.jobs_task_claim_idx;
CREATE INDEX jobs_claim_idx ON {schema}.jobs (priority DESC, seq) WHERE status = 'waiting' AND NOT scheduled;
CREATE INDEX jobs_task_claim_idx ON {schema}.jobs (task_id, priority DESC, seq)
    WHERE status = 'waiting' AND NOT scheduled;
CREATE INDEX IF NOT EXISTS jobs_scheduled_idx ON {schema}.jobs (run_after) WHERE status = 'waiting' AND scheduled;

-- The SQL interface takes run_at: add_job(..., run_at), insert_job(..., INOUT job_id, run_at),
-- insert_jobs(..., p_run_at). A function with another parameter is another function (CREATE OR
-- REPLACE would add an ambiguous overload), so each old one is replaced here by a stub of the
-- new signature that every role granted EXECUTE on the old one is granted too (as the grantee
-- had it: WITH GRANT OPTION included), and dropped; functions/insert.sql then gives the stubs
-- their bodies (CREATE OR REPLACE keeps privileges). A schema whose functions were never created
-- (tests build schemas from migrations alone) has nothing to replace.
DO $$
DECLARE
    -- the schema's name, read from the catalog (never pasted into a literal)
    v_schema text := (SELECT n.nspname FROM pg_catalog.pg_type AS t
                        JOIN pg_catalog.pg_namespace AS n ON n.oid = t.typnamespace
                       WHERE t.oid = pg_catalog.pg_typeof(NULL::{schema}.jobs));
    v_old    regprocedure;
    v_new    regprocedure;
    v_stub   record;
    v_grant  record;
BEGIN
    FOR v_stub IN
        SELECT * FROM (VALUES
            ('FUNCTION', 'add_job', '(text, text, integer, json)',
             '(text, text, integer, json, timestamptz)',
             '(type_key text, task_key text, priority integer, arguments json, run_at timestamptz DEFAULT NULL) '
             'RETURNS uuid LANGUAGE plpgsql AS $stub$ BEGIN RETURN NULL; END $stub$'),
            ('PROCEDURE', 'insert_job', '(text, text, integer, json, uuid)',
             '(text, text, integer, json, uuid, timestamptz)',
             '(type_key text, task_key text, priority integer, arguments json, INOUT job_id uuid DEFAULT NULL, '
             'run_at timestamptz DEFAULT NULL) LANGUAGE plpgsql AS $stub$ BEGIN END $stub$'),
            ('FUNCTION', 'insert_jobs', '(text, text, integer, jsonb[])',
             '(text, text, integer, jsonb[], timestamptz)',
             '(p_type_key text, p_task_key text, p_priority integer, p_arguments jsonb[], '
             'p_run_at timestamptz DEFAULT NULL) RETURNS uuid[] LANGUAGE plpgsql AS $stub$ BEGIN RETURN NULL; END $stub$')
        ) AS s(kind, name, old_arguments, new_arguments, definition)
    LOOP
        v_old := pg_catalog.to_regprocedure(pg_catalog.format('%I.%I%s', v_schema, v_stub.name, v_stub.old_arguments));
        CONTINUE WHEN v_old IS NULL;
        EXECUTE pg_catalog.format('CREATE %s %I.%I%s', v_stub.kind, v_schema, v_stub.name, v_stub.definition);
        v_new := pg_catalog.to_regprocedure(pg_catalog.format('%I.%I%s', v_schema, v_stub.name, v_stub.new_arguments));
        FOR v_grant IN
            SELECT a.grantee, a.is_grantable
              FROM pg_catalog.pg_proc AS p, pg_catalog.aclexplode(p.proacl) AS a
             WHERE p.oid = v_old AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON %s %s TO %s%s', v_stub.kind, v_new,
                CASE WHEN v_grant.grantee = 0 THEN 'PUBLIC'
                     ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(v_grant.grantee)) END,
                CASE WHEN v_grant.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        EXECUTE pg_catalog.format('DROP %s %s', v_stub.kind, v_old);
    END LOOP;
END $$;

-- Internal helpers that take run_at now (functions/insert.sql creates them again).
DROP FUNCTION IF EXISTS {schema}._insert_job(text, text, integer, jsonb);
DROP FUNCTION IF EXISTS {schema}._insert_waiting({schema}.tasks, integer, jsonb[]);
DROP FUNCTION IF EXISTS {schema}._insert_batch({schema}.tasks, integer, jsonb[]);
DROP FUNCTION IF EXISTS {schema}._fan_out({schema}.tasks, integer, jsonb);
