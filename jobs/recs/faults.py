"""A test hook for the fault drills (tests/e2e/test_publish_faults.py), off unless set.

`RECS_TEST_FAULT=<point>:<action>` makes the job, on reaching `fault_point("<point>")`,
either raise (`fail`) or write the marker file `<RECS_TEST_FAULT_DIR>/<point>` and sleep
until `<point>.continue` appears there (`pause`), so that a test can kill -9 the job at
a known point, or act on the database and then let the job go on.
"""

from __future__ import annotations

import os
import time


def fault_point(point: str) -> None:
    wanted, _, action = os.environ.get("RECS_TEST_FAULT", "").partition(":")
    if wanted != point:
        return
    if action == "fail":
        raise RuntimeError(f"injected failure at {point}")
    folder = os.environ["RECS_TEST_FAULT_DIR"]
    with open(os.path.join(folder, point), "w") as marker:
        marker.write(str(os.getpid()))
    while not os.path.exists(os.path.join(folder, f"{point}.continue")):
        time.sleep(0.1)
