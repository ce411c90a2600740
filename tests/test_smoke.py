from __future__ import annotations

from jobmaster_async import JobMaster


async def test_insert_pop_execute(jm: JobMaster) -> None:
    job_id = await jm.insert_job("tasks_for_tests", "add", 5, {"a": 2})
    job = await jm.pop_job()
    assert job is not None and job.job_id == job_id
    assert job.arguments == {"a": 2, "b": 1}
    await job.execute()
    assert job.status == "complete"
    stored = await jm.get_job(job_id)
    assert stored is not None and stored.status == "complete" and stored.result == 3
