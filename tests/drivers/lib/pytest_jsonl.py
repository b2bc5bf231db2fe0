"""A pytest plugin (-p pytest_jsonl) that appends each test's outcome to
$DRIVERS_RESULTS as one JSON line as soon as the test ends, so a run cut
short by the time limit keeps what it had. One line per test: a failed
setup, call or teardown makes it failed; skipped and xfailed are skipped."""

import json
import os

import pytest

_state = {}


def _write(nodeid, outcome, message, seconds):
    with open(os.environ["DRIVERS_RESULTS"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"name": nodeid, "outcome": outcome, "message": message,
                            "seconds": round(seconds, 3)}) + "\n")


def pytest_runtest_logreport(report):
    st = _state.setdefault(report.nodeid, {"outcome": None, "message": "", "seconds": 0.0})
    st["seconds"] += report.duration
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
        _write(report.nodeid, st["outcome"] or "passed", st["message"], st["seconds"])
        del _state[report.nodeid]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Writes the selected tests, in order, to $DRIVERS_COLLECTED, then leaves
    out those already in $DRIVERS_RESULTS: a run resumed after a test that hung
    (pytest-timeout ends the process) goes on with the next one."""
    collected = os.environ.get("DRIVERS_COLLECTED")
    if collected:
        with open(collected, "w", encoding="utf-8") as f:
            f.writelines(item.nodeid + "\n" for item in items)
    done = set()
    if os.path.exists(os.environ["DRIVERS_RESULTS"]):
        with open(os.environ["DRIVERS_RESULTS"], encoding="utf-8") as f:
            done = {json.loads(line)["name"] for line in f if line.strip()}
    if done:
        keep = [item for item in items if item.nodeid not in done]
        gone = [item for item in items if item.nodeid in done]
        if gone:
            config.hook.pytest_deselected(items=gone)
            items[:] = keep

