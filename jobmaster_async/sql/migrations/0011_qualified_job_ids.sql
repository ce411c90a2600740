-- The default of jobs.job_id with every built-in qualified. Placeholders: {schema} is the quoted
-- schema name.
--
-- The plain insert (queries.sql insert_job_fast) evaluates this default with the caller's
-- search_path, where set_bit(bytea, integer, integer) and *(numeric, integer) planted in public
-- would be better matches than pg_catalog's set_bit(bytea, bigint, integer) and
-- *(numeric, numeric): every built-in is qualified, the operator too (tests/test_shadowing.py).
-- EXTRACT, OVERLAY and SUBSTRING syntax calls pg_catalog's functions already.
CREATE OR REPLACE FUNCTION {schema}._new_job_id() RETURNS uuid
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
