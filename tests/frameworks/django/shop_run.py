"""shop_run.py — the Django side of pgshift's framework test (tests/it/frameworks.rs).

    shop_run.py migrate TARGET           manage.py migrate shop TARGET, through $PGPORT
    shop_run.py serve SECONDS            the app in version $APP_VERSION: ORM traffic for SECONDS,
                                         every read checked against what this process wrote;
                                         prints {"ops": N, "errors": [...]} as its last line
    shop_run.py report                   the schema and django_migrations, as JSON

Connection from the environment: PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD;
PGAPPNAME names the process in pgshift's old-shape report."""

import json
import os
import sys
import time

import django
from django.conf import settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
settings.configure(
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["PGHOST"], "PORT": os.environ["PGPORT"], "NAME": os.environ["PGDATABASE"],
        "USER": os.environ["PGUSER"], "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "OPTIONS": {"application_name": os.environ.get("PGAPPNAME", "shop")},
    }},
    INSTALLED_APPS=["shop"], USE_TZ=True, TIME_ZONE="UTC",
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from shop.models import Customer  # noqa: E402

V1 = os.environ.get("APP_VERSION", "2") == "1"


def serve(seconds):
    """Creates, reads, updates customers; every read must match what was written."""
    mine, ops, errors = {}, 0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with transaction.atomic():
                name = f"{'v1' if V1 else 'v2'} {ops}"
                fields = {"name": name, "legacy": "x"} if V1 else {"full_name": name}
                c = Customer.objects.create(email=f"e{ops}@shop", amount=ops, **fields)
                mine[c.pk] = (name, ops)
            pk = list(mine)[ops % len(mine)]
            got = Customer.objects.get(pk=pk)
            want = mine[pk]
            have = (got.name if V1 else got.full_name, got.amount)
            if have != want:
                errors.append(f"read {pk}: {have} != {want}")
            if not V1 and got.status != "active":
                errors.append(f"status of {pk}: {got.status!r}")
            renamed = f"{want[0]}!"
            update = {"name": renamed} if V1 else {"full_name": renamed}
            Customer.objects.filter(pk=pk).update(amount=want[1] + 1, **update)
            mine[pk] = (renamed, want[1] + 1)
            ops += 1
        except Exception as e:  # every error counts
            errors.append(f"{time.time():.3f} {type(e).__name__}: {e}")
            connection.close()
            time.sleep(0.05)
        time.sleep(0.002)
    print(json.dumps({"ops": ops, "errors": errors[:20], "error_count": len(errors)}))


def report():
    with connection.cursor() as cur:
        cur.execute("select column_name, data_type, is_nullable, column_default from information_schema.columns"
                    " where table_name = 'shop_customer' order by column_name")
        columns = cur.fetchall()
        cur.execute("select indexname from pg_indexes where tablename = 'shop_customer' order by 1")
        indexes = [r[0] for r in cur.fetchall()]
        cur.execute("select app, name from django_migrations order by id")
        history = cur.fetchall()
    print(json.dumps({"columns": columns, "indexes": indexes, "history": history}))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "migrate":
        call_command("migrate", "shop", sys.argv[2], verbosity=0)
    elif command == "serve":
        serve(float(sys.argv[2]))
    elif command == "report":
        report()
    else:
        sys.exit(f"unknown command {command}")
