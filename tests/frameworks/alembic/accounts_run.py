"""accounts_run.py — the Alembic side of pgshift's framework test (tests/it/frameworks.rs).

    accounts_run.py upgrade TARGET      alembic upgrade TARGET, through $PGPORT
    accounts_run.py serve SECONDS       the app in version $APP_VERSION (SQLAlchemy Core on
                                        psycopg 3): traffic for SECONDS, every read checked
                                        against what this process wrote; prints
                                        {"ops": N, "errors": [...], "error_count": N}
    accounts_run.py report              the schema and alembic_version, as JSON

Connection from PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGAPPNAME."""

import json
import os
import sys
import time

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))
E = os.environ
URL = sa.engine.URL.create(
    "postgresql+psycopg", username=E["PGUSER"], password=E.get("PGPASSWORD") or None,
    host=E["PGHOST"], port=int(E["PGPORT"]), database=E["PGDATABASE"],
    query={"application_name": E.get("PGAPPNAME", "accounts")},
)
V1 = E.get("APP_VERSION", "2") == "1"


def upgrade(target):
    os.environ["ALEMBIC_URL"] = URL.render_as_string(hide_password=False)
    cfg = Config()
    cfg.set_main_option("script_location", HERE)
    command.upgrade(cfg, target)


def serve(seconds):
    engine = sa.create_engine(URL)
    name = "username" if V1 else "login"
    mine, ops, errors = {}, 0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with engine.begin() as c:
                who = f"{'v1' if V1 else 'v2'}-{ops}"
                extra = ", note" if V1 else ""
                values = ", 'n'" if V1 else ""
                pk = c.execute(sa.text(
                    f"insert into accounts ({name}, balance, email{extra}) values (:n, :b, :e{values}) returning id"
                ), {"n": who, "b": ops, "e": f"{who}@x"}).scalar_one()
                mine[pk] = (who, ops)
            pk = list(mine)[ops % len(mine)]
            with engine.begin() as c:
                cols = f"{name}, balance" + ("" if V1 else ", status")
                row = c.execute(sa.text(f"select {cols} from accounts where id = :id"), {"id": pk}).one()
                if (row[0], row[1]) != mine[pk]:
                    errors.append(f"read {pk}: {tuple(row)} != {mine[pk]}")
                if not V1 and row[2] != "active":
                    errors.append(f"status of {pk}: {row[2]!r}")
                c.execute(sa.text(f"update accounts set balance = balance + 1 where id = :id"), {"id": pk})
                mine[pk] = (mine[pk][0], mine[pk][1] + 1)
            ops += 1
        except Exception as e:  # every error counts
            errors.append(f"{time.time():.3f} {type(e).__name__}: {e}")
            time.sleep(0.05)
        time.sleep(0.002)
    print(json.dumps({"ops": ops, "errors": errors[:20], "error_count": len(errors)}))


def report():
    engine = sa.create_engine(URL)
    with engine.connect() as c:
        columns = [list(r) for r in c.execute(sa.text(
            "select column_name, data_type, is_nullable, column_default from information_schema.columns"
            " where table_name = 'accounts' order by column_name"))]
        indexes = [r[0] for r in c.execute(sa.text(
            "select indexname from pg_indexes where tablename = 'accounts' order by 1"))]
        history = [r[0] for r in c.execute(sa.text("select version_num from alembic_version"))]
    print(json.dumps({"columns": columns, "indexes": indexes, "history": history}))


if __name__ == "__main__":
    {"upgrade": lambda: upgrade(sys.argv[2]), "serve": lambda: serve(float(sys.argv[2])),
     "report": report}[sys.argv[1]]()
