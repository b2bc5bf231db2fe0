"""harness.py — what the battery's three Python apps share: the BATTERY_* environment, the
shape (column names and amount conversions), the in-memory model of the app's own rows and its
export, read checks, SQLSTATE extraction, the JSON Lines operation log and the loop that runs
operations until the stop file exists. Amounts are kept in integer cents in the model whatever
the shape; a new-shape app writes and expects numeric(12,2) values with exactly two decimals."""

import asyncio
import json
import os
import random
import time
import traceback
from decimal import Decimal

MAX_USERS = 24  # an app prunes its oldest user beyond this many, so its data stays small


class WrongRead(Exception):
    """A read disagreed with the model."""


class Skip(Exception):
    """The operation had nothing to work on (say, no order yet); it is not logged."""


def expect(what, got, want):
    if got != want:
        raise WrongRead(f"{what}: got {got!r}, expected {want!r}")


class Shape:
    """The columns and value conversions of one shape of the application."""

    def __init__(self, shape):
        if shape not in ("old", "new"):
            raise SystemExit(f"BATTERY_SHAPE must be old or new, not {shape!r}")
        self.old = shape == "old"
        self.name_col = "name" if self.old else "full_name"
        self.amount_col = "amount" if self.old else "amount_decimal"

    def amount(self, cents):
        """The value this shape writes for an amount of `cents`."""
        return cents if self.old else Decimal(cents).scaleb(-2)

    def unit(self):
        """One currency unit (100 cents) in this shape's column type."""
        return 100 if self.old else Decimal("1.00")

    def expect_amount(self, what, got, cents):
        """An amount read back: int cents, or a numeric with exactly two decimals."""
        if self.old:
            ok = type(got) is int and got == cents
        else:
            ok = isinstance(got, Decimal) and str(got) == str(self.amount(cents))
        if not ok:
            raise WrongRead(f"{what}: got {got!r}, expected {self.amount(cents)!r}")

    def export_amount(self, cents):
        return cents if self.old else f"{cents // 100}.{cents % 100:02d}"


class Env:
    def __init__(self):
        e = os.environ
        self.host = e["BATTERY_HOST"]
        self.port = int(e["BATTERY_PORT"])
        self.user = e["BATTERY_USER"]
        self.db = e["BATTERY_DB"]
        self.password = e.get("BATTERY_PASSWORD") or None
        self.shape = Shape(e["BATTERY_SHAPE"])
        self.tag = e["BATTERY_TAG"]
        self.stop_file = e["BATTERY_STOP_FILE"]
        self.log_path = e["BATTERY_LOG"]
        self.model_path = e["BATTERY_MODEL"]
        self.pause = int(e.get("BATTERY_PAUSE_MS", "20")) / 1000
        # The old version pins itself to the old shape of users.login_count (a type change
        # that keeps the name: the statement cannot tell); the new one is marked by its
        # application_name (the migration's new_shape). Postgres takes the setting as is.
        self.options = "-c pgshift.shape=old" if self.shape.old else ""


class Model:
    """What the app believes it wrote: orgs by id, users by email, orders by id."""

    def __init__(self, env):
        self.env = env
        self.orgs = {}  # id -> name
        self.users = {}  # email -> {id, email, n, name, login_count, settings, org_id}
        self.orders = {}  # id -> {email, cents, status}
        self.next_n = 0
        self.rng = random.Random(env.tag)

    def new_user_fields(self):
        """Fields of a user this app has not created yet."""
        self.next_n += 1
        n = self.next_n
        return {
            "n": n,
            "email": f"{self.env.tag}-u{n:05d}@example.com",
            "name": person_name(n, 1),
            "org_id": self.rng.choice(sorted(self.orgs)),
            "settings": self.settings(),
        }

    def settings(self):
        return {"theme": self.rng.choice(["dark", "light"]), "lang": self.rng.choice(["en", "fr", "de"])}

    def add_user(self, uid, f):
        self.users[f["email"]] = {"id": uid, "email": f["email"], "n": f["n"], "name": f["name"],
                                  "login_count": 0, "settings": f["settings"], "org_id": f["org_id"]}

    def user(self):
        if not self.users:
            raise Skip()
        return self.users[self.rng.choice(sorted(self.users))]

    def order_id(self):
        if not self.orders:
            raise Skip()
        return self.rng.choice(sorted(self.orders))

    def cents(self):
        """A random amount; one in four above the partial index's 1000.00."""
        return self.rng.randrange(100001, 300000) if self.rng.random() < 0.25 else self.rng.randrange(0, 100000)

    def drop_user(self, email):
        uid = self.users.pop(email)["id"]
        for oid in [o for o, v in self.orders.items() if v["email"] == email]:
            del self.orders[oid]
        return uid

    def oldest_beyond_limit(self):
        """The email of the oldest user when the app holds more than MAX_USERS, else None."""
        if len(self.users) <= MAX_USERS:
            return None
        return min(self.users, key=lambda e: self.users[e]["n"])

    def by_name_order(self):
        """Emails in (name, email) order: names share a prefix and differ in a zero-padded
        number, so any collation orders them alike."""
        return sorted(self.users, key=lambda e: (self.users[e]["name"], e))

    def totals(self):
        """email -> (cents, count) over the orders the app holds."""
        out = {}
        for o in self.orders.values():
            c, n = out.get(o["email"], (0, 0))
            out[o["email"]] = (c + o["cents"], n + 1)
        return out

    def export(self):
        s = self.env.shape
        return {
            "users": {e: {s.name_col: u["name"], "login_count": u["login_count"], "settings": u["settings"]}
                      for e, u in self.users.items()},
            "orders": {str(i): {s.amount_col: s.export_amount(o["cents"]), "status": o["status"]}
                       for i, o in self.orders.items()},
        }


def person_name(n, rev):
    return f"Person {n:05d} O'Brien r{rev}"


def renamed(name):
    """The next revision of a person's name."""
    head, rev = name.rsplit(" r", 1)
    return f"{head} r{int(rev) + 1}"


def db_error(exc):
    """{sqlstate, message, statement} of the database error behind `exc` (through driver and ORM
    wrappers), or a sqlstate of None for an error that is not the server's. The statement is
    known when the ORM keeps it: SQLAlchemy's `statement`, or `battery_statement` set by an app."""
    statement = getattr(exc, "battery_statement", None) or getattr(exc, "statement", None)
    statement = statement if isinstance(statement, str) else None
    pending, seen = [exc], set()
    while pending:
        e = pending.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(code, str) and code:
            diag = getattr(e, "diag", None)
            msg = getattr(diag, "message_primary", None) or getattr(e, "message", None) or str(e)
            return {"sqlstate": code, "message": str(msg).splitlines()[0] if str(msg) else "", "statement": statement}
        for nxt in (getattr(e, "orig", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                pending.append(nxt)
    first = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return {"sqlstate": None, "message": first[0][:500] if first else type(exc).__name__, "statement": statement}


class Runner:
    """Runs operations, logs each one, and writes the model at exit."""

    def __init__(self):
        self.env = Env()
        self.shape = self.env.shape
        self.model = Model(self.env)
        self.log = open(self.env.log_path, "a", buffering=1)

    def stopped(self):
        return os.path.exists(self.env.stop_file)

    def record(self, op, t_ms, error=None, wrong=None):
        line = {"t_ms": t_ms, "op": op, "ok": error is None and wrong is None, "error": error, "wrong": wrong}
        self.log.write(json.dumps(line) + "\n")

    def run(self, op, fn, on_error):
        t_ms = int(time.time() * 1000)
        try:
            fn()
        except Skip:
            return
        except WrongRead as w:
            self.record(op, t_ms, wrong=str(w))
        except Exception as e:  # every error is reported, none ends the app
            self.record(op, t_ms, error=db_error(e))
            on_error()
        else:
            self.record(op, t_ms)

    async def run_async(self, op, fn, on_error):
        t_ms = int(time.time() * 1000)
        try:
            await fn()
        except Skip:
            return
        except WrongRead as w:
            self.record(op, t_ms, wrong=str(w))
        except Exception as e:  # every error is reported, none ends the app
            self.record(op, t_ms, error=db_error(e))
            await on_error()
        else:
            self.record(op, t_ms)

    def loop(self, ops, on_error):
        """Round-robin over (name, fn) until the stop file exists."""
        i = 0
        while not self.stopped():
            name, fn = ops[i % len(ops)]
            i += 1
            self.run(name, fn, on_error)
            time.sleep(self.env.pause)

    async def loop_async(self, ops, on_error):
        i = 0
        while not self.stopped():
            name, fn = ops[i % len(ops)]
            i += 1
            await self.run_async(name, fn, on_error)
            await asyncio.sleep(self.env.pause)

    def finish(self):
        with open(self.env.model_path, "w") as f:
            json.dump(self.model.export(), f, indent=1, sort_keys=True)
        self.log.close()
