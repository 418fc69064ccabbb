"""Independent Spark jobs submitted together, from a few driver threads.

A grid of small seeded fits (ALS for each regularisation) is bound by the latency of
Spark's many short stages as much as by the cores: while one job waits for its next
stage, another's tasks run. Spark schedules the jobs of several driver threads on the
same executors, and a fit's result does not depend on what runs beside it. The numpy
work between jobs (an ALS baseline's top k, ranking candidates while tuning) releases
the GIL in its inner loops, so it overlaps with the jobs too; `in_background` uses that.

What collects a large result to the driver must not run beside another such job: each
result passes through the driver JVM's heap (four candidate tables at once overflowed
a 6 GiB heap at 100k products).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# More at once only adds memory: with 2 to 8 cores the stages' gaps are filled by three.
JOBS_AT_ONCE = 3


def concurrently(function: Callable[[Item], Result], items: Iterable[Item], at_once: int = JOBS_AT_ONCE
                 ) -> list[Result]:
    """`[function(item) for item in items]`, up to `at_once` of them running at a time;
    the first exception is raised once every call has ended."""
    items = list(items)
    if len(items) <= 1 or at_once <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(at_once, len(items)), thread_name_prefix="recs-job") as pool:
        return list(pool.map(function, items))


def in_background(function: Callable[..., Result], *args, **kwargs) -> Future:
    """Start `function(*args, **kwargs)` on a thread of its own; `.result()` waits for it
    (and raises what it raised). For work whose result is needed only at the end."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recs-background")
    future = pool.submit(function, *args, **kwargs)
    pool.shutdown(wait=False)
    return future
