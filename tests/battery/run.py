#!/usr/bin/env python3
"""run.py — the battery's orchestrator: runs the six apps (SQLAlchemy sync and async, Django,
Sequelize, Knex, JDBC), each in the old and the new shape, through pgshift while it drives
both migrations through their lifecycle from the admin port, then checks and reports.

Modes:
  (default)   through pgshift: planned → expand → backfill → validate → switch-reads new →
              contract (force) → old-shape apps stopped → complete → new-shape apps stopped.
  --rollback  through pgshift: planned → expand → backfill → validate → switch-reads new →
              switch-reads old → new-shape apps stopped → rollback → old-shape apps stopped.
  --direct    the control experiment, no pgshift: old-shape apps on a database made with
              schema.sql, new-shape apps on one made with schema_new.sql; must be clean.

Both migrations move in lockstep: each step is applied to users_full_name, then to
orders_amount_decimal, then every app runs BATTERY_PHASE_SECS (--phase-secs) in that phase. A
phase starts when its first admin request is sent; an operation counts in the phase in which
it started (app start-up counts in `planned`).

Protocol with the apps (each one process, shape by environment): BATTERY_HOST, BATTERY_PORT,
BATTERY_USER, BATTERY_DB, BATTERY_PASSWORD (optional), BATTERY_SHAPE (old|new), BATTERY_TAG
(prefix of every email and org name the app writes), BATTERY_STOP_FILE (the app loops until it
exists), BATTERY_LOG (JSON Lines, one per operation: {"t_ms", "op", "ok", "error":
{"sqlstate", "message", "statement"?} | null, "wrong": str | null}), BATTERY_MODEL (written at
exit: the app's rows in its own shape: {"users": {email: {name|full_name, login_count,
settings}}, "orders": {id: {amount (int cents) | amount_decimal ("12.34"), status}}}),
BATTERY_PAUSE_MS (sleep between operations). Apps exit 0; errors are in the log.

Checks after the run: each app's model against the database read through pgshift in the app's
own shape while that shape is served (old shape: after its apps stop, before complete; new
shape: at the end; after a rollback, the new-shape models also against the old columns read
directly), and, directly on Postgres after the backfill and again before contract (or
rollback), that both physical columns agree on every row. pass = no error, no wrong read,
every model equal, no mismatching row, every lifecycle step accepted, every app exited 0, and
no new-shape app among the clients pgshift counts as old-shape before contract (or rollback).

Needs: setup.sh's directory (--env-dir) and, for pgshift modes, a pgshift serving the two
migrations of stack.sh's config on a database that has schema.sql (stack.sh up does that).
"""

import argparse
import collections
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
JDBC_JAR = "/usr/share/java/postgresql.jar"

# Errors a client gets through pgshift that are Postgres' own answer to what a migration does,
# documented in docs/rewriting.md, which drivers heal by preparing the statement again: a
# prepared `*` whose columns change when the migration completes or is rolled back (while it
# runs, `*` yields both migrating columns). (SQLSTATE, message, phases.) Anything else fails.
EXPECTED = [
    ("0A000", "cached plan must not change result type", {"complete", "rolled-back"}),
]


def expected_error(sqlstate, message, phase):
    return any(sqlstate == code and message == text and phase in phases
               for code, text, phases in EXPECTED)
MIGRATIONS = ["users_full_name", "orders_amount_decimal", "orgs_slug", "users_login_count_bigint"]
# A type change that keeps the name: once contracted, the name is the new column's for every
# client, so it is contracted after the old-shape apps stop (as its contract guard would have it).
KEPT = "users_login_count_bigint"
SHAPES = ["old", "new"]
COLUMNS = {"old": ("name", "amount"), "new": ("full_name", "amount_decimal")}


def app_commands(env_dir):
    py = str(env_dir / "venv" / "bin" / "python")
    return {
        "sqla-sync": [py, str(HERE / "apps" / "sqla_sync.py")],
        "sqla-async": [py, str(HERE / "apps" / "sqla_async.py")],
        "django": [py, str(HERE / "apps" / "django_app.py")],
        "sequelize": ["node", str(HERE / "node" / "sequelize_app.js")],
        "knex": ["node", str(HERE / "node" / "knex_app.js")],
        "jdbc": ["java", "-cp", f"{env_dir / 'java'}:{JDBC_JAR}", "JdbcApp"],
    }


def now_ms():
    return int(time.time() * 1000)


def host_port(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


# ---------------------------------------------------------------- apps


class App:
    """One app process in one shape."""

    def __init__(self, name, shape, run_id, work):
        self.name, self.shape = name, shape
        self.tag = f"{name}-{shape}-{run_id}"
        self.log = work / f"{self.tag}.jsonl"
        self.model = work / f"{self.tag}.model.json"
        self.stop_file = work / f"{self.tag}.stop"
        self.output = work / f"{self.tag}.out"
        self.proc = None
        self.exit_code = None

    def start(self, cmd, host, port, args, env_dir):
        env = dict(os.environ, BATTERY_HOST=host, BATTERY_PORT=str(port), BATTERY_USER=args.user,
                   BATTERY_DB=args.db if not args.direct else direct_db(args.db, self.shape),
                   BATTERY_SHAPE=self.shape, BATTERY_TAG=self.tag, BATTERY_STOP_FILE=str(self.stop_file),
                   BATTERY_LOG=str(self.log), BATTERY_MODEL=str(self.model), BATTERY_PAUSE_MS=str(args.pause_ms),
                   NODE_PATH=str(env_dir / "node" / "node_modules"), PYTHONPATH=str(HERE / "apps"))
        if args.password:
            env["BATTERY_PASSWORD"] = args.password
        self.log.touch()
        with open(self.output, "w") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(HERE))

    def started(self):
        return self.log.stat().st_size > 0

    def stop(self, timeout=60):
        self.stop_file.touch()
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.exit_code = "killed: did not stop within %ds" % timeout

    def records(self):
        with open(self.log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def read_model(self):
        try:
            with open(self.model) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            return {"error": f"no model: {e}"}


def direct_db(db, shape):
    return f"{db}_direct_{shape}"


# ---------------------------------------------------------------- admin port


class Admin:
    def __init__(self, url):
        self.url = url.rstrip("/")
        self.steps = []  # every lifecycle request and its answer

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"null")
            except ValueError:
                return e.code, None
        except (urllib.error.URLError, OSError) as e:
            return 0, {"error": str(e)}

    def act(self, migration, action, body=None, expect=200):
        t0 = now_ms()
        status, answer = self.request("POST", f"/migrations/{migration}/{action}", body or {})
        ok = status == expect
        step = {"migration": migration, "action": action, "body": body or {}, "status": status, "ok": ok,
                "ms": now_ms() - t0,
                "phase": answer.get("phase") if isinstance(answer, dict) else None,
                "error": None if ok else answer}
        self.steps.append(step)
        print(f"  POST {migration}/{action} {json.dumps(body or {})} -> {status}"
              f" ({step['ms']} ms){'' if ok else ' ' + json.dumps(answer)[:300]}", flush=True)
        return ok

    def status(self):
        return self.request("GET", "/status")[1]

    def wait_phase(self, phase, timeout):
        deadline, phases = time.time() + timeout, {}
        while time.time() < deadline:
            st = self.status()
            phases = {m["id"]: m["phase"] for m in (st or {}).get("migrations", [])}
            if all(phases.get(m) == phase for m in MIGRATIONS):
                return True
            time.sleep(0.2)
        self.steps.append({"migration": "*", "action": f"wait for {phase}", "ok": False,
                           "error": f"not {phase} after {timeout}s: {phases}"})
        return False


# ---------------------------------------------------------------- database reads


def connect(host, port, args, db, app_name="battery-orchestrator"):
    return psycopg.connect(host=host, port=port, user=args.user, password=args.password or None, dbname=db,
                           application_name=app_name, autocommit=True, prepare_threshold=None)


def export_amount(shape, value):
    if shape == "old":
        return value
    return str(value) if isinstance(value, Decimal) else repr(value)


def read_shape(conn, shape, tag):
    """The app's rows, in `shape`, as an app's model exports them."""
    name, amount = COLUMNS[shape]
    like = f"{tag}-%"
    users = {email: {name: n, "login_count": lc, "settings": s} for email, n, lc, s in conn.execute(
        f"select u.email, u.{name}, u.login_count, u.settings from app.users u where u.email like %s", [like])}
    orders = {str(oid): {amount: export_amount(shape, a), "status": st} for oid, a, st in conn.execute(
        f"select o.id, o.{amount}, o.status::text from app.orders o join app.users u on u.id = o.user_id "
        f"where u.email like %s", [like])}
    return {"users": users, "orders": orders}


def read_new_from_old_columns(conn, tag):
    """After a rollback: a new-shape app's rows from the old columns, converted to the new shape."""
    old = read_shape(conn, "old", tag)
    return {
        "users": {e: {"full_name": u["name"], "login_count": u["login_count"], "settings": u["settings"]}
                  for e, u in old["users"].items()},
        "orders": {i: {"amount_decimal": f"{o['amount'] // 100}.{o['amount'] % 100:02d}", "status": o["status"]}
                   for i, o in old["orders"].items()},
    }


def diff_models(model, db):
    """Differences between an app's model and what the database holds (empty when equal)."""
    if "error" in model:
        return [model["error"]]
    out = []
    for kind in ("users", "orders"):
        want, got = model.get(kind, {}), db.get(kind, {})
        for key in sorted(set(want) | set(got)):
            if key not in got:
                out.append(f"{kind} {key}: in the model, missing from the database")
            elif key not in want:
                out.append(f"{kind} {key}: in the database, not in the model")
            elif want[key] != got[key]:
                out.append(f"{kind} {key}: model {json.dumps(want[key], sort_keys=True)}, "
                           f"database {json.dumps(got[key], sort_keys=True, default=str)}")
    return out


def physical_parity(conn, when):
    """Rows whose two physical columns disagree, directly on Postgres."""
    users = conn.execute("select count(*), count(*) filter (where name is distinct from full_name "
                         "or login_count is distinct from login_count_pgshift_new) "
                         "from app.users").fetchone()
    orders = conn.execute("select count(*), count(*) filter (where amount is distinct from "
                          "(amount_decimal * 100)::integer) from app.orders").fetchone()
    # orgs.slug (added with up = lower(name)) once it exists: every row has it, the apps
    # never name it, so every value came from the backfill or from pgshift's INSERT rewrite.
    has_slug = conn.execute("select exists (select 1 from information_schema.columns where "
                            "table_schema = 'app' and table_name = 'orgs' and column_name = 'slug')").fetchone()[0]
    orgs = (conn.execute("select count(*), count(*) filter (where slug is distinct from lower(name)) "
                         "from app.orgs").fetchone() if has_slug else (0, 0))
    check = {"when": when, "users_rows": users[0], "users_mismatches": users[1],
             "orders_rows": orders[0], "orders_mismatches": orders[1],
             "orgs_rows": orgs[0], "orgs_mismatches": orgs[1]}
    print(f"  both columns agree? {when}: users {users[1]} of {users[0]} rows differ, "
          f"orders {orders[1]} of {orders[0]} rows differ"
          + (f", orgs.slug {orgs[1]} of {orgs[0]} rows without lower(name)" if has_slug else ""), flush=True)
    return check


def physical_columns(conn):
    rows = conn.execute("select table_name, array_agg(column_name::text order by ordinal_position) "
                        "from information_schema.columns where table_schema = 'app' "
                        "and table_name in ('users', 'orders') group by table_name").fetchall()
    return {t: cols for t, cols in rows}


# ---------------------------------------------------------------- the run


class Run:
    def __init__(self, args):
        self.args = args
        self.run_id = "%04x" % random.randrange(0x10000)
        self.work = Path(args.work_dir or f"/tmp/battery-run-{self.run_id}")
        self.work.mkdir(parents=True, exist_ok=True)
        self.env_dir = Path(args.env_dir)
        commands = app_commands(self.env_dir)
        names = args.apps.split(",") if args.apps else list(commands)
        unknown = [n for n in names if n not in commands]
        if unknown:
            sys.exit(f"unknown apps {unknown}; known: {list(commands)}")
        self.commands = commands
        self.apps = [App(n, s, self.run_id, self.work) for n in names for s in SHAPES]
        self.phases = []  # (name, start ms)
        self.model_checks = []
        self.physical = []
        self.attribution = []
        self.pg_host, self.pg_port = host_port(args.pg)
        self.admin = None if args.direct else Admin(args.admin)
        self.log_offsets = {}

    def enter(self, phase):
        self.phases.append((phase, now_ms()))
        print(f"[{self.elapsed():6.1f}s] phase {phase}", flush=True)

    def elapsed(self):
        return (now_ms() - self.t0) / 1000

    def dwell(self):
        time.sleep(self.args.phase_secs)

    def pg(self, db=None):
        return connect(self.pg_host, self.pg_port, self.args, db or self.args.db)

    def prepare_databases(self):
        a = self.args
        if a.direct:
            with self.pg("postgres") as c:
                for shape in SHAPES:
                    c.execute(f'drop database if exists "{direct_db(a.db, shape)}" with (force)')
                    c.execute(f'create database "{direct_db(a.db, shape)}"')
            for shape, schema in (("old", "schema.sql"), ("new", "schema_new.sql")):
                with self.pg(direct_db(a.db, shape)) as c:
                    c.execute((HERE / schema).read_text())
        elif not a.schema_exists:
            with self.pg() as c:
                c.execute((HERE / "schema.sql").read_text())

    def start_apps(self):
        if self.args.direct:
            host, port = self.pg_host, self.pg_port
        else:
            host, port = host_port(self.args.proxy)
        for app in self.apps:
            app.start(self.commands[app.name], host, port, self.args, self.env_dir)
        deadline = time.time() + 120
        while time.time() < deadline and not all(a.started() or a.proc.poll() is not None for a in self.apps):
            time.sleep(0.2)
        late = [a.tag for a in self.apps if not a.started()]
        print(f"[{self.elapsed():6.1f}s] apps running: {len(self.apps) - len(late)} of {len(self.apps)}"
              + (f"; not started: {late}" if late else ""), flush=True)

    def stop_apps(self, shape):
        apps = [a for a in self.apps if a.shape == shape]
        for a in apps:
            a.stop_file.touch()
        for a in apps:
            a.stop()
        print(f"[{self.elapsed():6.1f}s] {shape}-shape apps stopped", flush=True)

    def check_models(self, shape, when, host, port, db, read=None):
        """Compares the models of the `shape` apps with read(conn, tag), by default the rows
        read in that shape."""
        read = read or (lambda conn, tag: read_shape(conn, shape, tag))
        try:
            with connect(host, port, self.args, db) as c:
                for a in (a for a in self.apps if a.shape == shape):
                    diffs = diff_models(a.read_model(), read(c, a.tag))
                    self.model_checks.append({"app": a.name, "shape": shape, "when": when, "equal": not diffs,
                                              "differences": diffs[:20], "difference_count": len(diffs)})
        except psycopg.Error as e:
            for a in (a for a in self.apps if a.shape == shape):
                self.model_checks.append({"app": a.name, "shape": shape, "when": when, "equal": False,
                                          "differences": [f"reading failed: {e.sqlstate} {e}"],
                                          "difference_count": 1})
        bad = [m for m in self.model_checks if m["when"] == when and not m["equal"]]
        print(f"  models of the {shape}-shape apps {when}: "
              + ("all equal" if not bad else f"{len(bad)} differ"), flush=True)

    def parity(self, when):
        try:
            with self.pg() as c:
                self.physical.append(physical_parity(c, when))
        except psycopg.Error as e:
            self.physical.append({"when": when, "error": f"{e.sqlstate} {e}"})

    def old_shape_attribution(self, when):
        """The applications pgshift counts as old-shape clients of each migration (what contract's
        refusal names, the operator's evidence that old versions are gone); a new-shape app
        among them is a wrong attribution."""
        new_tags = {a.tag for a in self.apps if a.shape == "new"}
        for m in (self.admin.status() or {}).get("migrations", []):
            names = sorted(a.get("name") or "" for a in m.get("old_shape", {}).get("applications", []))
            # No app names orgs.slug: every app is that migration's old shape (their org INSERTs
            # are given up), whatever its shape for the other two.
            wrong = [n for n in names if n in new_tags and m.get("id") != "orgs_slug"]
            self.attribution.append({"migration": m.get("id"), "when": when, "old_shape_applications": names,
                                     "new_shape_apps_counted_as_old": wrong})
            print(f"  pgshift counts as old-shape clients of {m.get('id')}: {', '.join(names) or 'none'}"
                  + (f" — {len(wrong)} of them new-shape apps" if wrong else ""), flush=True)

    def all_migrations(self, action, body=None, expect=200, but=()):
        for m in MIGRATIONS:
            if m not in but:
                self.admin.act(m, action, body, expect)

    def backfill(self):
        self.all_migrations("backfill", {"batch_size": 25, "batch_pause_ms": 100}, expect=202)
        self.admin.wait_phase("backfilled", timeout=300)

    def lifecycle(self):
        a, proxy = self.args, host_port(self.args.proxy)
        self.enter("planned")
        self.start_apps()
        self.dwell()
        self.enter("expanded")
        self.all_migrations("expand")
        self.dwell()
        self.enter("backfilling")
        self.backfill()
        self.enter("backfilled")
        self.parity("after the backfill")
        self.dwell()
        self.enter("validated")
        self.all_migrations("validate")
        self.dwell()
        self.enter("switched")
        self.all_migrations("switch-reads", {"to": "new"})
        self.dwell()
        if a.rollback:
            self.enter("switched-back")
            self.all_migrations("switch-reads", {"to": "old"})
            self.dwell()
            self.parity("before the rollback")
            self.old_shape_attribution("before the rollback")
            self.stop_apps("new")
            self.check_models("new", "through pgshift, reads on old, before rollback", *proxy, a.db)
            self.enter("rolled-back")
            self.all_migrations("rollback")
            self.dwell()
            self.stop_apps("old")
            self.check_models("old", "through pgshift after rollback", *proxy, a.db)
            self.check_models("new", "old columns read directly after rollback", self.pg_host, self.pg_port, a.db,
                              read=read_new_from_old_columns)
        else:
            self.parity("before contract")
            self.old_shape_attribution("before contract")
            self.enter("contracted")
            self.all_migrations("contract", {"force": True}, but=(KEPT,))
            self.dwell()
            self.stop_apps("old")
            self.check_models("old", "through pgshift after contract, before complete", *proxy, a.db)
            self.admin.act(KEPT, "contract", {"force": True})
            self.dwell()
            self.enter("complete")
            self.all_migrations("complete")
            self.dwell()
            self.stop_apps("new")
            self.check_models("new", "through pgshift after complete", *proxy, a.db)

    def direct(self):
        self.enter("direct")
        self.start_apps()
        time.sleep(self.args.phase_secs * 4)
        for shape in SHAPES:
            self.stop_apps(shape)
            self.check_models(shape, "directly on its own database", self.pg_host, self.pg_port,
                              direct_db(self.args.db, shape))

    def mark_logs(self):
        for key in ("pg_log", "pgshift_log"):
            path = getattr(self.args, key)
            self.log_offsets[key] = os.path.getsize(path) if path and os.path.exists(path) else 0

    def execute(self):
        self.t0 = now_ms()
        self.mark_logs()
        self.prepare_databases()
        try:
            self.direct() if self.args.direct else self.lifecycle()
        finally:
            for a in self.apps:
                if a.proc and a.proc.poll() is None:
                    a.stop(timeout=30)
        self.t_end = now_ms()

    # ------------------------------------------------------------ report

    def phase_of(self, t_ms):
        current = self.phases[0][0]
        for name, start in self.phases:
            if t_ms >= start:
                current = name
        return current

    def new_log_lines(self, key):
        path = getattr(self.args, key)
        if not path or not os.path.exists(path):
            return []
        with open(path, errors="replace") as f:
            f.seek(self.log_offsets.get(key, 0))
            return f.read().splitlines()

    def postgres_errors(self):
        """ERROR lines of Postgres' log during the run with their STATEMENT, by application name."""
        tags = {a.tag: a for a in self.apps}
        out = collections.OrderedDict()
        lines = self.new_log_lines("pg_log")
        for i, line in enumerate(lines):
            if " ERROR:  " not in line or " app=" not in line:
                continue
            app_name = line.split(" app=", 1)[1].split(" ", 1)[0]
            message = line.split(" ERROR:  ", 1)[1]
            statement = None
            for nxt in lines[i + 1:i + 6]:
                if " STATEMENT:  " in nxt:
                    statement = nxt.split(" STATEMENT:  ", 1)[1]
                    break
                if " ERROR:  " in nxt or " LOG:  " in nxt:
                    break
            if statement and statement.startswith("pgshift_refused_"):
                continue  # a refusal: pgshift's marker, not the app's statement
            a = tags.get(app_name)
            key = (a.name if a else app_name, a.shape if a else "-", message, statement)
            out[key] = out.get(key, 0) + 1
        return [{"app": k[0], "shape": k[1], "message": k[2], "statement": k[3], "count": n} for k, n in out.items()]

    def pgshift_refusals(self):
        """pgshift's `refused a statement` log lines during the run, phase names masked. (pgshift
        logs the reason, not the statement: the apps' error records carry the statement where
        their ORM keeps it.)"""
        out = collections.Counter()
        for line in self.new_log_lines("pgshift_log"):
            if "refused a statement" in line:
                out[mask(line.split("refused a statement", 1)[1].strip())] += 1
        return [{"detail": k, "count": n} for k, n in out.most_common()]

    def report(self):
        cells = collections.defaultdict(lambda: {"ops": 0, "errors": 0, "wrong": 0, "expected": 0})
        errors = collections.OrderedDict()
        expected = collections.OrderedDict()
        wrongs = collections.OrderedDict()
        app_exits = []
        for a in self.apps:
            app_exits.append({"app": a.name, "shape": a.shape, "exit": a.exit_code})
            for rec in a.records():
                phase = self.phase_of(rec["t_ms"])
                cell = cells[(a.name, a.shape, phase)]
                cell["ops"] += 1
                if rec.get("error") and expected_error(rec["error"].get("sqlstate"),
                                                       rec["error"].get("message"), phase):
                    cell["expected"] += 1
                    key = (rec["error"].get("sqlstate"), rec["error"].get("message"), a.name, a.shape,
                           rec["op"], phase)
                    entry = expected.setdefault(key, {"sqlstate": key[0], "message": key[1], "app": a.name,
                                                      "shape": a.shape, "op": rec["op"], "phase": phase,
                                                      "count": 0})
                    entry["count"] += 1
                elif rec.get("error"):
                    cell["errors"] += 1
                    e = rec["error"]
                    key = (e.get("sqlstate"), e.get("message"), a.name, a.shape, rec["op"], phase)
                    entry = errors.setdefault(key, {"sqlstate": key[0], "message": key[1], "app": a.name,
                                                    "shape": a.shape, "op": rec["op"], "phase": phase,
                                                    "count": 0, "statement": e.get("statement")})
                    entry["count"] += 1
                if rec.get("wrong"):
                    cell["wrong"] += 1
                    key = (a.name, a.shape, rec["op"], phase)
                    entry = wrongs.setdefault(key, {"app": a.name, "shape": a.shape, "op": rec["op"],
                                                    "phase": phase, "count": 0, "first": rec["wrong"]})
                    entry["count"] += 1
        totals = {k: sum(c[k] for c in cells.values()) for k in ("ops", "errors", "wrong", "expected")}
        lifecycle_ok = self.admin is None or all(s["ok"] for s in self.admin.steps)
        physical_ok = all(p.get("users_mismatches") == 0 and p.get("orders_mismatches") == 0
                          and p.get("orgs_mismatches") == 0 for p in self.physical)
        models_ok = all(m["equal"] for m in self.model_checks)
        exits_ok = all(x["exit"] == 0 for x in app_exits)
        attribution_ok = not any(x["new_shape_apps_counted_as_old"] for x in self.attribution)
        passed = (totals["errors"] == 0 and totals["wrong"] == 0 and models_ok and physical_ok and lifecycle_ok
                  and exits_ok and attribution_ok and totals["ops"] > 0)
        report = {
            "mode": "direct" if self.args.direct else ("rollback" if self.args.rollback else "forward"),
            "pass": passed,
            "run_id": self.run_id,
            "work_dir": str(self.work),
            "wall_seconds": round((self.t_end - self.t0) / 1000, 1),
            "phases": [{"phase": p, "start_ms": t, "at_s": round((t - self.t0) / 1000, 1)} for p, t in self.phases],
            "lifecycle": self.admin.steps if self.admin else [],
            "totals": totals,
            "checks": {"lifecycle_ok": lifecycle_ok, "models_ok": models_ok, "physical_ok": physical_ok,
                       "apps_exited_0": exits_ok, "old_shape_attribution_ok": attribution_ok},
            "cells": [{"app": k[0], "shape": k[1], "phase": k[2], **v} for k, v in cells.items()],
            "errors": list(errors.values()),
            "expected_errors": list(expected.values()),
            "wrong_reads": list(wrongs.values()),
            "model_checks": self.model_checks,
            "physical_parity": self.physical,
            "old_shape_attribution": self.attribution,
            "app_exits": app_exits,
            "postgres_errors": self.postgres_errors(),
            "pgshift_refusals": self.pgshift_refusals(),
        }
        if not self.args.direct:
            try:
                with self.pg() as c:
                    report["physical_columns_at_end"] = physical_columns(c)
            except psycopg.Error as e:
                report["physical_columns_at_end"] = {"error": str(e)}
            st = self.admin.status() or {}
            report["pgshift_status_at_end"] = [
                {k: m.get(k) for k in ("id", "phase", "read_source", "statements", "old_shape")}
                for m in st.get("migrations", [])]
        return report


def mask(message):
    """A message with what varies from one occurrence to the next masked: phase names, quoted
    numbers, character positions."""
    message = re.sub(r"phase [a-z_-]+\)", "phase …)", message)
    message = re.sub(r'"-?[0-9][0-9.]*"', '"…"', message)
    return re.sub(r" at character [0-9]+", "", message)


def group_errors(errors, phases):
    """Distinct errors grouped by SQLSTATE and masked message, in order of first occurrence."""
    kinds = collections.OrderedDict()
    for e in errors:
        k = kinds.setdefault((e["sqlstate"], mask(e["message"] or "")), {
            "sqlstate": e["sqlstate"], "message": mask(e["message"] or ""), "count": 0, "phases": set(),
            "hit_by": collections.Counter(), "statements": {}})
        who = f"{e['app']} {e['shape']} {e['op']}"
        k["count"] += e["count"]
        k["phases"].add(e["phase"])
        k["hit_by"][who] += e["count"]
        if e.get("statement"):
            k["statements"].setdefault(who, e["statement"])
    for k in kinds.values():
        k["phases"] = [p for p in phases if p in k["phases"]]
    return list(kinds.values())


def print_report(run, rep):
    phases = [p["phase"] for p in rep["phases"]]
    cells = {(c["app"], c["shape"], c["phase"]): c for c in rep["cells"]}
    starts = ", ".join(f"{p['phase']} {p['at_s']}s" for p in rep["phases"])
    print(f"\n== battery report: mode {rep['mode']}, {rep['wall_seconds']} s, phases at {starts}")
    print("   cells are operations/errors/wrong reads; '-' = the app was not running in that phase\n")
    width = max(12, *(len(p) for p in phases))
    print(f"{'app':<11} {'shape':<5} " + " ".join(f"{p:>{width}}" for p in phases) + f" {'total':>{width}}")
    for a in run.apps:
        row, tot = [], [0, 0, 0]
        for p in phases:
            c = cells.get((a.name, a.shape, p))
            if c:
                row.append(f"{c['ops']}/{c['errors']}/{c['wrong']}")
                tot = [tot[0] + c["ops"], tot[1] + c["errors"], tot[2] + c["wrong"]]
            else:
                row.append("-")
        print(f"{a.name:<11} {a.shape:<5} " + " ".join(f"{x:>{width}}" for x in row)
              + f" {'/'.join(map(str, tot)):>{width}}")
    t = rep["totals"]
    print(f"\ntotal: {t['ops']} operations, {t['errors']} errors, {t['wrong']} wrong reads, "
          f"{t['expected']} documented errors")
    for e in rep["expected_errors"]:
        print(f"   documented: {e['sqlstate']} {e['message']}: {e['app']} {e['shape']} {e['op']} "
              f"in {e['phase']} ×{e['count']}")
    if rep["errors"]:
        kinds = group_errors(rep["errors"], phases)
        print(f"\n-- {len(kinds)} kinds of error (phase names and literal values masked; the JSON report "
              f"lists all {len(rep['errors'])} distinct (sqlstate, message, app, shape, op, phase))")
        for i, k in enumerate(kinds, 1):
            print(f"[{i}] {k['sqlstate']} ×{k['count']}: {k['message'][:400]}")
            print(f"     phases: {' '.join(k['phases'])}")
            print(f"     hit by: {', '.join(f'{who} ×{n}' for who, n in k['hit_by'].items())}")
            for who, statement in list(k["statements"].items())[:3]:
                print(f"     statement ({who}): {' '.join(statement.split())[:400]}")
    if rep["wrong_reads"]:
        print("\n-- wrong reads (app shape op phase ×count: first)")
        for w in rep["wrong_reads"]:
            print(f"{w['app']} {w['shape']} {w['op']} {w['phase']} ×{w['count']}: {w['first'][:400]}")
    print("\n-- model checks")
    for m in rep["model_checks"]:
        print(f"{m['app']:<11} {m['shape']:<4} {'equal' if m['equal'] else 'DIFFERENT'} ({m['when']})"
              + ("".join(f"\n     {d[:300]}" for d in m["differences"][:5])
                 + (f"\n     … {m['difference_count']} in all" if m["difference_count"] > 5 else "")))
    for p in rep["physical_parity"]:
        print(f"-- both physical columns {p['when']}: " + (p["error"] if "error" in p else
              f"users {p['users_mismatches']}/{p['users_rows']} differ, orders "
              f"{p['orders_mismatches']}/{p['orders_rows']} differ"))
    for x in rep["old_shape_attribution"]:
        if x["new_shape_apps_counted_as_old"]:
            print(f"-- pgshift counted new-shape apps as old-shape clients of {x['migration']} {x['when']}: "
                  f"{', '.join(x['new_shape_apps_counted_as_old'])}")
    bad_steps = [s for s in rep["lifecycle"] if not s["ok"]]
    for s in bad_steps:
        print(f"-- lifecycle step failed: {s['migration']} {s['action']}: {json.dumps(s.get('error'))[:400]}")
    for x in rep["app_exits"]:
        if x["exit"] != 0:
            print(f"-- app {x['app']} {x['shape']} exit: {x['exit']} (see {run.work})")
    if rep["postgres_errors"]:
        seen = collections.OrderedDict()
        for e in rep["postgres_errors"]:
            v = seen.setdefault(mask(e["message"]), {"count": 0, "apps": collections.Counter(), "statements": {}})
            v["count"] += e["count"]
            v["apps"][f"{e['app']} {e['shape']}"] += e["count"]
            v["statements"].setdefault(f"{e['app']} {e['shape']}", e["statement"])
        print(f"\n-- Postgres' log: {len(seen)} kinds of error, with statements as Postgres received them from "
              "pgshift (refusals are pgshift's marker, left out; the JSON report has every statement)")
        for message, v in seen.items():
            print(f"×{v['count']}: {message[:200]}\n     from: {', '.join(f'{a} ×{n}' for a, n in v['apps'].items())}")
            for who, statement in list(v["statements"].items())[:3]:
                print(f"     statement ({who}): {' '.join((statement or '').split())[:400]}")
    if rep["pgshift_refusals"]:
        print(f"\n-- pgshift's log: {len(rep['pgshift_refusals'])} kinds of refusal (phase names masked)")
        for r in rep["pgshift_refusals"]:
            print(f"×{r['count']}: {r['detail'][:400]}")
    failed = [k for k, v in rep["checks"].items() if not v]
    print(f"\nRESULT: {'PASS' if rep['pass'] else 'FAIL'}: {t['errors']} errors, {t['wrong']} wrong reads"
          + (f"; failed checks: {', '.join(failed)}" if failed else "; models, physical columns, lifecycle steps "
             "and app exits all as they should be"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--direct", action="store_true", help="control experiment: apps straight to Postgres")
    p.add_argument("--rollback", action="store_true", help="end with switch-reads old and rollback")
    p.add_argument("--pg", default="127.0.0.1:55432", help="Postgres HOST:PORT (direct connections)")
    p.add_argument("--proxy", default="127.0.0.1:56432", help="pgshift HOST:PORT")
    p.add_argument("--admin", default="http://127.0.0.1:59432", help="pgshift admin URL")
    p.add_argument("--user", default="postgres")
    p.add_argument("--password", default=os.environ.get("BATTERY_PASSWORD"))
    p.add_argument("--db", default="battery", help="database (direct mode: prefix of its two databases)")
    p.add_argument("--schema-exists", action="store_true",
                   help="do not (re)create schema app: pgshift read the catalog at its start")
    p.add_argument("--env-dir", default=str(HERE.parent.parent / "target" / "battery"),
                   help="setup.sh's directory")
    p.add_argument("--phase-secs", "--seconds", type=float,
                   default=float(os.environ.get("BATTERY_PHASE_SECS", "3")), help="traffic per phase")
    p.add_argument("--pause-ms", type=int, default=20, help="each app's pause between operations")
    p.add_argument("--apps", help="comma-separated subset of: sqla-sync,sqla-async,django,sequelize,knex,jdbc")
    p.add_argument("--work-dir", help="where logs and models go (default /tmp/battery-run-ID)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--pg-log", help="Postgres' log file (stack.sh: DIR/postgres.log): its ERRORs go in the report")
    p.add_argument("--pgshift-log", help="pgshift's log file (stack.sh: DIR/pgshift.log): its refusals go in the report")
    p.add_argument("--keep-work-dir", action="store_true", help="keep logs and models after a passing run")
    args = p.parse_args()
    if args.direct and args.rollback:
        p.error("--direct and --rollback exclude each other")

    run = Run(args)
    run.execute()
    rep = run.report()
    print_report(run, rep)
    if args.report:
        Path(args.report).write_text(json.dumps(rep, indent=1, default=str))
        print(f"report: {args.report}")
    if rep["pass"] and not args.keep_work_dir and not args.work_dir:
        shutil.rmtree(run.work, ignore_errors=True)
    else:
        print(f"app logs and models: {run.work}")


if __name__ == "__main__":
    main()
