-- Periodic tasks: firing a schedule's tick (the worker's scheduler, worker/scheduler.py).
-- One of the function files that every deploy() runs after the migrations, in the order
-- db/sql.py FUNCTIONS gives. Placeholders, fragments and name resolution: sql/README.md.


-- Fires tick p_tick of schedule p_schedule (DESIGN 9 "Periodic tasks"): if the tick is later than
-- the schedule's last one (or than its creation, for a new schedule), records it and inserts the
-- job, in one transaction. The record is a compare-and-set on last_tick, whose row lock makes
-- every other worker firing the same tick wait for this one and then find it fired: each tick
-- creates exactly one job, however many workers fire it. The job has exactly the schedule's
-- arguments and priority (no tick time), so a tick whose identical previous job is still active
-- dedupes into it. Returns the job's id (or its active twin's); NULL when the tick was fired
-- already, or the schedule is gone (changed or removed by a deploy). A refusal of the arguments
-- (the task's parameters changed since) raises, and nothing is recorded.
CREATE OR REPLACE FUNCTION {schema}.fire_schedule(p_schedule int, p_tick timestamptz)
RETURNS uuid LANGUAGE plpgsql {entry_point} AS $$
DECLARE
    v_schedule {schema}.schedules;
    v_task     {schema}.tasks;
    v_job      uuid;
BEGIN
    UPDATE {schema}.schedules AS s SET last_tick = p_tick
     WHERE s.schedule_id = p_schedule AND p_tick > coalesce(s.last_tick, s.created_at)
    RETURNING s.* INTO v_schedule;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_task FROM {schema}.tasks WHERE task_id = v_schedule.task_id;
    v_job := {schema}._insert_job(v_task.type_key, v_task.task_key, v_schedule.priority, v_schedule.arguments);
    UPDATE {schema}.schedules SET last_job_id = v_job WHERE schedule_id = p_schedule;
    RETURN v_job;
END $$;
