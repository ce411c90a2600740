-- Traces (DESIGN 9.1 "Traces"): the W3C trace context a job was inserted in, so that each of its
-- attempts runs in a span that is a child of the inserter's. Placeholders: {schema} is the quoted
-- schema name.

-- {"traceparent": "00-<trace id>-<span id>-<flags>", "tracestate": "..."} (tracestate only when
-- there is one), checked when stored (functions/insert.sql _trace_context); NULL: none.
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS trace_context jsonb;

-- The internal insert helpers take the context as a last parameter, and claim_jobs() returns it:
-- a function with another parameter is another function, and CREATE OR REPLACE cannot change
-- what one returns, so the old ones go; functions/ creates the new ones. None of them is granted
-- to anyone (EXECUTE is revoked from PUBLIC; workers run as the schema's owner): nothing to
-- carry over. The SQL interface (insert_job, add_job, insert_jobs) keeps its signatures.
DROP FUNCTION IF EXISTS {schema}._insert_job(text, text, integer, jsonb, timestamptz);
DROP FUNCTION IF EXISTS {schema}._insert_waiting({schema}.tasks, integer, jsonb[], timestamptz);
DROP FUNCTION IF EXISTS {schema}._insert_batch({schema}.tasks, integer, jsonb[], timestamptz);
DROP FUNCTION IF EXISTS {schema}._fan_out({schema}.tasks, integer, jsonb, timestamptz);
DROP FUNCTION IF EXISTS {schema}._carry_out_plan({schema}.plan_step[], uuid[]);
DROP FUNCTION IF EXISTS {schema}.claim_jobs(uuid, integer[], integer, integer);
