import threading

from moe_reward.app import jobs


def test_a_key_runs_once_and_reports_progress():
    gate = threading.Event()
    calls = []

    def work(report):
        calls.append(1)
        report("half", 0.5)
        gate.wait(5)
        return 42

    first = jobs.submit("test:once", work, "a test job")
    second = jobs.submit("test:once", work)
    assert second is first
    jobs.wait("test:once", timeout=0.2)
    assert first.status == jobs.RUNNING and first.fraction == 0.5 and first.message == "half"
    gate.set()
    done = jobs.wait("test:once", timeout=5)
    assert done.status == jobs.DONE and done.result == 42 and calls == [1]
    assert jobs.submit("test:once", work) is first  # finished jobs are kept, not rerun
    jobs.forget("test:once")
    assert jobs.get("test:once") is None


def test_a_failed_job_keeps_a_one_line_error_and_can_be_resubmitted():
    def boom(report):
        raise ValueError("bad input\nsecond line")

    job = jobs.wait(jobs.submit("test:fail", boom).key, timeout=5)
    assert job.status == jobs.FAILED and job.error == "ValueError: bad input" and "Traceback" in job.details
    again = jobs.submit("test:fail", lambda report: "ok")
    assert again is not job and jobs.wait("test:fail", timeout=5).result == "ok"
    jobs.forget("test:fail")
