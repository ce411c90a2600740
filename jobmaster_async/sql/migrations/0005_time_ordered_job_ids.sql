-- Time-ordered job ids. Placeholders: {schema} is the quoted schema name.

-- A job id was a random UUID (version 4): every job's primary-key entry, and every new row
-- version's at claim and completion, went to a random leaf page of jobs_pkey, and its history
-- rows to a random page of job_events_job_idx. A version-7 layout (RFC 9562: 48 bits of Unix
-- milliseconds, then the version, the variant and 74 random bits) puts the jobs of the same
-- moment next to each other in both indexes, which makes claiming and completing faster
-- (benchmarks/README.md). uuidv7() is PostgreSQL 18 only;
-- this builds the same layout from gen_random_uuid() (PostgreSQL 13+). Ids stay unguessable
-- (74 random bits) and are still plain uuids: nothing may read meaning into their order.
CREATE OR REPLACE FUNCTION {schema}._new_job_id() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    -- a random v4 uuid; its first 6 bytes replaced by the milliseconds; version bits 0100 -> 0111
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                  PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                                    FROM 3)
                  FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

ALTER TABLE {schema}.jobs ALTER COLUMN job_id SET DEFAULT {schema}._new_job_id();
