#!/usr/bin/env python3
"""Runs one driver suite once and writes its results, or prints the report.

  drivers.py node     WORKDIR RESULTS TIMEOUT   node-postgres: every test/integration/**/*-tests.js
  drivers.py unittest WORKDIR RESULTS TIMEOUT   asyncpg: tests.suite() with unittest, as its CI does
  drivers.py pytest   WORKDIR RESULTS TIMEOUT [PYTEST ARGS...]   psycopg: pytest, as its CI does
  drivers.py report   RESULTS_DIR

RESULTS is a .jsonl file: one {"name", "outcome", "message"} line per test,
outcome passed | failed | skipped; beside it RESULTS.meta.json says how the run
ended (exit code, seconds, whether the time limit cut it). The suite's own
output goes to RESULTS.log.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(cmd, cwd, env, log, timeout):
    """Runs cmd in its own process group, output to log; kills the group at timeout."""
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return p.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return p.returncode, True


def _meta(results, **kw):
    with open(results + ".meta.json", "w") as f:
        json.dump(kw, f)


def run_node(workdir, results, timeout):
    """Each file in its own node process, like the suite's Makefile (find | xargs node)."""
    pgdir = os.path.join(workdir, "node_modules", "pg")
    files = sorted(os.path.relpath(p, pgdir) for p in
                   glob.glob(os.path.join(pgdir, "test/integration/**/*-tests.js"), recursive=True))
    only = os.environ.get("DRIVERS_NODE_FILTER")
    if only:
        import re
        files = [f for f in files if re.search(only, f)]
    open(results, "w").close()
    log = results + ".log"
    open(log, "w").close()
    start = time.monotonic()
    per_file = float(os.environ.get("DRIVERS_NODE_FILE_TIMEOUT", "60"))
    cut = False
    for rel in files:
        left = timeout - (time.monotonic() - start)
        if left <= 1:
            cut = True
            break
        tmp = results + ".file"
        open(tmp, "w").close()
        env = dict(os.environ, DRIVERS_NODE_RESULTS=tmp, DRIVERS_NODE_FILE=rel)
        with open(log, "a") as f:
            f.write(f"\n===== {rel}\n")
        t0 = time.monotonic()
        code, timed_out = _run(["node", "-r", os.path.join(HERE, "node_preload.js"), rel],
                               pgdir, env, log, min(per_file, left))
        with open(log, "a") as f:
            f.write(f"\n===== exit {code}{' (time limit)' if timed_out else ''}"
                    f" after {time.monotonic() - t0:.1f} s\n")
        name = rel.removeprefix("test/integration/")
        lines = [json.loads(line) for line in open(tmp) if line.strip()]
        with open(results, "a") as f:
            for t in lines:
                f.write(json.dumps({"name": f"{name} :: {t['name']}", "outcome": t["outcome"],
                                    "message": t["message"][-4000:]}) + "\n")
            if code != 0 and not any(t["outcome"] == "failed" for t in lines):
                why = f"timed out after {min(per_file, left):.0f} s" if timed_out else f"exit code {code}"
                tail = _tail(log, 40)
                f.write(json.dumps({"name": f"{name} :: (file)", "outcome": "failed",
                                    "message": f"the file ended with {why} outside any test:\n{tail}"}) + "\n")
            elif not lines:
                f.write(json.dumps({"name": f"{name} :: (file)", "outcome": "passed", "message": ""}) + "\n")
        os.unlink(tmp)
        if timed_out and left <= per_file:
            cut = True
            break
    _meta(results, exit=0, seconds=round(time.monotonic() - start, 1), timed_out=cut, files=len(files))


def _tail(log, n):
    with open(log, errors="replace") as f:
        return "".join(f.readlines()[-n:])


UNITTEST_RUNNER = r"""
import json, sys, time, traceback, unittest
results = sys.argv[1]
sys.path.insert(0, '.')
import tests
out = open(results, 'a', buffering=1)
def rec(test, outcome, message=''):
    out.write(json.dumps({'name': test.id(), 'outcome': outcome, 'message': message[-4000:]}) + '\n')
class Result(unittest.TextTestResult):
    def startTest(self, test):
        super().startTest(test); self._bad = None; self._skip = None
    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase): self._bad = self._exc_info_to_string(err, test)
        else: rec(test, 'failed', self._exc_info_to_string(err, test))  # a class or module fixture
    def addFailure(self, test, err):
        super().addFailure(test, err); self._bad = self._exc_info_to_string(err, test)
    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._bad = (self._bad or '') + f'[{subtest.id()}] ' + self._exc_info_to_string(err, test)
    def addSkip(self, test, reason):
        super().addSkip(test, reason); self._skip = reason
    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err); self._skip = 'expected failure'
    def stopTest(self, test):
        super().stopTest(test)
        if self._bad is not None: rec(test, 'failed', self._bad)
        elif self._skip is not None: rec(test, 'skipped', self._skip)
        else: rec(test, 'passed')
r = unittest.TextTestRunner(verbosity=2, resultclass=Result, stream=sys.stdout).run(tests.suite())
sys.exit(not r.wasSuccessful())
"""


def run_unittest(workdir, results, timeout):
    open(results, "w").close()
    log = results + ".log"
    open(log, "w").close()
    start = time.monotonic()
    code, cut = _run([sys.executable, "-c", UNITTEST_RUNNER, results], workdir,
                     dict(os.environ), log, timeout)
    _meta(results, exit=code, seconds=round(time.monotonic() - start, 1), timed_out=cut)


def run_pytest(workdir, results, timeout, args):
    """pytest with the pytest_jsonl plugin. A test that hangs is ended by
    pytest-timeout's thread method (--timeout, set by the caller), which ends
    the whole process: the test is recorded as failed and pytest starts again
    on the tests after it, until every selected test has a result or the
    time runs out."""
    open(results, "w").close()
    log = results + ".log"
    open(log, "w").close()
    collected = results + ".collected"
    cache = results + ".cache"  # psycopg's conftest refuses to start after a killed run
    env = dict(os.environ, DRIVERS_RESULTS=results, DRIVERS_COLLECTED=collected,
               PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.monotonic()
    code, cut, hung = 0, False, 0
    while True:
        left = timeout - (time.monotonic() - start)
        if left <= 1:
            cut = True
            break
        subprocess.run(["rm", "-rf", cache])
        mark = os.path.getsize(log)
        code, cut = _run([sys.executable, "-bb", "-m", "pytest", "-p", "pytest_jsonl",
                          "-o", f"cache_dir={cache}", "--timeout-method=thread", *args],
                         workdir, env, log, left)
        if cut or not os.path.exists(collected):
            break
        done, _ = load(results)
        order = [line.strip() for line in open(collected) if line.strip()]
        rest = [n for n in order if n not in done]
        with open(log, "rb") as f:
            f.seek(mark)
            said = f.read().decode(errors="replace")
        if not rest or "+ Timeout +" not in said or hung >= 20:
            break
        hung += 1
        with open(results, "a") as f:
            f.write(json.dumps({"name": rest[0], "outcome": "failed", "message":
                                "hung: no result within the per-test time limit; pytest-timeout ended "
                                "the run, which went on after this test\n" + said[-6000:]}) + "\n")
    subprocess.run(["rm", "-rf", cache])
    _meta(results, exit=code, seconds=round(time.monotonic() - start, 1), timed_out=cut, hung=hung)


def load(path):
    tests = {}
    for line in open(path, errors="replace"):
        if line.strip():
            t = json.loads(line)
            tests[t["name"]] = t
    meta = {}
    if os.path.exists(path + ".meta.json"):
        meta = json.load(open(path + ".meta.json"))
    return tests, meta


def counts(tests):
    c = {"passed": 0, "failed": 0, "skipped": 0}
    for t in tests.values():
        c[t["outcome"]] += 1
    return c


def first_line(msg):
    """The line that says what went wrong: pytest's last `E ` line, else the
    last line of the message that is not a stack frame."""
    for line in reversed(msg.strip().splitlines()):
        if line.startswith("E "):
            return line[1:].strip()[:200]
    for line in reversed(msg.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith(("at ", "File ", "^")):
            return line[:200]
    return ""


def report(results_dir):
    """Per suite: counts per run, then every test whose outcome differs from the
    first direct run. Tests that one run did not reach (a node file that ended at
    its first failure, a run cut by its time limit) are counted per file, not listed.
    A test whose outcome differs between two direct runs is marked flaky."""
    suites = [s for s in ("node-postgres", "asyncpg", "psycopg")
              if os.path.isdir(os.path.join(results_dir, s))]
    rows, diffs, unreached = [], [], []
    for suite in suites:
        runs = sorted(glob.glob(os.path.join(results_dir, suite, "*.jsonl")),
                      key=lambda p: (not os.path.basename(p).startswith("direct"), p))
        loaded = {os.path.basename(p)[:-6]: load(p) for p in runs}
        for label, (tests, meta) in loaded.items():
            c = counts(tests)
            note = "cut by its time limit" if meta.get("timed_out") else ""
            rows.append((suite, label, c["passed"], c["failed"], c["skipped"], meta.get("seconds", ""), note))
        directs = [l for l in loaded if l.startswith("direct")]
        if not directs:
            continue
        base = directs[0]
        flaky = set()
        for other in directs[1:]:
            a, b = loaded[base][0], loaded[other][0]
            flaky |= {n for n in set(a) & set(b) if a[n]["outcome"] != b[n]["outcome"]}
        for other in loaded:
            if other == base:
                continue
            a, b = loaded[base][0], loaded[other][0]
            missing = {}
            for name in sorted(set(a) | set(b)):
                if name not in a or name not in b:
                    who = other if name not in b else base
                    key = (who, name.split(" :: ")[0].split("::")[0])
                    missing[key] = missing.get(key, 0) + 1
                    continue
                oa, ob = a[name]["outcome"], b[name]["outcome"]
                if oa != ob:
                    msg = b[name]["message"] if ob == "failed" else a[name]["message"]
                    diffs.append((suite, base, other, name, oa, ob, first_line(msg),
                                  name in flaky and not other.startswith("direct")))
            for (who, where), n in sorted(missing.items()):
                unreached.append((suite, who, where, n))
    w = max([len(r[0]) for r in rows] + [5])
    lw = max([len(r[1]) for r in rows] + [3])
    print(f"{'suite':<{w}}  {'run':<{lw}}  {'passed':>6}  {'failed':>6}  {'skipped':>7}  {'secs':>6}")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:<{lw}}  {r[2]:>6}  {r[3]:>6}  {r[4]:>7}  {r[5]:>6}  {r[6]}")
    print()
    if not diffs:
        print("No test's result differs between runs.")
    else:
        print(f"Tests whose result differs ({len(diffs)}):")
        for suite, base, other, name, oa, ob, msg, fl in diffs:
            print(f"  [{suite}] {name}: {base}={oa} {other}={ob}" + (" (flaky direct)" if fl else "")
                  + (f"\n      {msg}" if msg else ""))
    if unreached:
        print()
        print("Tests one run did not reach (its file ended early, or the run was cut):")
        for suite, who, where, n in unreached:
            print(f"  [{suite}] {who}: {n} in {where}")
    return diffs


def main():
    cmd = sys.argv[1]
    if cmd == "node":
        run_node(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif cmd == "unittest":
        run_unittest(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif cmd == "pytest":
        run_pytest(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:])
    elif cmd == "summary":
        tests, meta = load(sys.argv[2])
        c = counts(tests)
        print(f"  {sys.argv[3]:<10} {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
              f" in {meta.get('seconds')} s" + ("  (cut by the time limit)" if meta.get("timed_out") else ""))
    elif cmd == "report":
        diffs = report(sys.argv[2])
        sys.exit(0 if not diffs else 1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
