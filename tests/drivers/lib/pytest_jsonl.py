"""A pytest plugin (-p pytest_jsonl) that appends each test's outcome to
$DRIVERS_RESULTS as one JSON line as soon as the test ends, so a run cut
short by the time limit keeps what it had. One line per test: a failed
setup, call or teardown makes it failed; skipped and xfailed are skipped."""

import json
import os

_state = {}


def _write(nodeid, outcome, message):
    with open(os.environ["DRIVERS_RESULTS"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"name": nodeid, "outcome": outcome, "message": message}) + "\n")


def pytest_runtest_logreport(report):
    st = _state.setdefault(report.nodeid, {"outcome": None, "message": ""})
    if report.failed:
        if st["outcome"] != "failed":
            st["outcome"] = "failed"
            where = "" if report.when == "call" else f"[{report.when}] "
            st["message"] = where + (report.longreprtext or "")[-4000:]
    elif report.skipped and st["outcome"] is None:
        st["outcome"] = "skipped"
        if hasattr(report, "wasxfail"):
            st["message"] = "xfail: " + str(report.wasxfail)
        elif isinstance(report.longrepr, tuple):
            st["message"] = str(report.longrepr[2])
    elif report.passed and report.when == "call" and st["outcome"] is None:
        st["outcome"] = "passed"
    if report.when == "teardown":
        _write(report.nodeid, st["outcome"] or "passed", st["message"])
        del _state[report.nodeid]
