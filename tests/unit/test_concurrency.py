"""Independent jobs submitted at once (recs/concurrency.py): they really overlap, results
keep their order, failures reach the caller."""

from __future__ import annotations

import threading

import pytest

from recs.concurrency import JOBS_AT_ONCE, concurrently, in_background


def test_calls_overlap_and_results_keep_the_order_of_the_items():
    # Each call waits for two others: run one after the other, the barrier would time out.
    meeting = threading.Barrier(JOBS_AT_ONCE, timeout=10)

    def job(item: int) -> int:
        meeting.wait()
        return item * 10

    assert concurrently(job, range(JOBS_AT_ONCE)) == [0, 10, 20]


def test_no_more_than_at_once_calls_run_together():
    running, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def job(item: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(0.2)
        with lock:
            running -= 1
        return item

    assert concurrently(job, range(7), at_once=2) == list(range(7))
    assert most == 2


def test_a_failed_call_raises_in_the_caller():
    def job(item: int) -> int:
        if item == 1:
            raise ValueError("bad item 1")
        return item

    with pytest.raises(ValueError, match="bad item 1"):
        concurrently(job, range(3))


def test_background_work_overlaps_the_caller_and_hands_back_its_result_or_error():
    started = threading.Event()
    carry_on = threading.Event()

    def work(value: int) -> int:
        started.set()
        assert carry_on.wait(10)
        return value + 1

    future = in_background(work, 41)
    assert started.wait(10)  # running while the caller goes on
    carry_on.set()
    assert future.result(timeout=10) == 42

    def broken() -> None:
        raise RuntimeError("ALS failed")

    with pytest.raises(RuntimeError, match="ALS failed"):
        in_background(broken).result(timeout=10)
