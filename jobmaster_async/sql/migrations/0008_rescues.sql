-- Lost workers are counted apart from retries (DESIGN 9 "Lost workers", 9.1 "Counting starts").
-- Placeholders: {schema} is the quoted schema name.

-- How many times a job was put back because its worker was lost; @task(rescues=N) allows N
-- (the next loss fails it: a job that kills its worker every time stops there).
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS rescues int NOT NULL DEFAULT 0;
ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS rescues int NOT NULL DEFAULT 3 CHECK (rescues >= 0);
