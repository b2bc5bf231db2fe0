"""django_app.py — battery app 3: the Django ORM, standalone (settings.configure), psycopg 3 with
Django's default client-side parameter binding. Unmanaged models over the schema, reached
through `options=-c search_path=app,public` (pgshift follows search_path from startup options).
bulk_create (multi-row INSERT … RETURNING) and bulk_create(update_conflicts=…) upserts,
select_related / prefetch_related, slicing, values().annotate() aggregates, F() updates,
save(), nested atomic() savepoints, .iterator() (a server-side cursor), JSONField lookups,
deletes (with Django's own cascade), raw-SQL CTEs and a Model.raw() join of users and orgs.
Every read is checked against the model (harness.py); see run.py for the protocol."""

import django
from django.conf import settings

from harness import Runner, Skip, expect, renamed

r = Runner()
env, shape, model = r.env, r.shape, r.model
OLD = shape.old
settings.configure(
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql", "HOST": env.host, "PORT": env.port, "NAME": env.db,
        "USER": env.user, "PASSWORD": env.password or "",
        "OPTIONS": {"options": f"-c search_path=app,public {env.options}".strip(), "application_name": env.tag},
    }},
    INSTALLED_APPS=[], USE_TZ=True, TIME_ZONE="UTC",
)
django.setup()

from django.db import connection, models, transaction  # noqa: E402  (needs settings)
from django.db.models import Count, F, Func, Sum, Value  # noqa: E402
from django.db.models.functions import Now  # noqa: E402

NAME = shape.name_col
AMOUNT = shape.amount_col
PREFIX = f"{env.tag}-"


class Org(models.Model):
    id = models.BigAutoField(primary_key=True)
    name = models.TextField(unique=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        app_label = "battery"
        managed = False
        db_table = "orgs"


class User(models.Model):
    id = models.AutoField(primary_key=True)
    org = models.ForeignKey(Org, models.DO_NOTHING, related_name="users")
    email = models.TextField(unique=True)
    if OLD:
        name = models.TextField()
    else:
        full_name = models.TextField()
    login_count = models.IntegerField(default=0)
    settings = models.JSONField(default=dict)
    email_domain = models.GeneratedField(
        expression=Func(F("email"), Value("@"), Value(2), function="split_part"),
        output_field=models.TextField(), db_persist=True)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(null=True)

    class Meta:
        app_label = "battery"
        managed = False
        db_table = "users"


class Order(models.Model):
    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(User, models.CASCADE, related_name="orders")
    if OLD:
        amount = models.IntegerField()
    else:
        amount_decimal = models.DecimalField(max_digits=12, decimal_places=2)
    status = models.CharField(max_length=20, default="new")
    note = models.TextField(null=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        app_label = "battery"
        managed = False
        db_table = "orders"


class RollbackToSavepoint(Exception):
    pass


def mine():
    return User.objects.filter(email__startswith=PREFIX)


def my_orders():
    return Order.objects.filter(user__email__startswith=PREFIX)


def check_user(what, u, m):
    expect(f"{what} {NAME}", getattr(u, NAME), m["name"])
    expect(f"{what} login_count", u.login_count, m["login_count"])
    expect(f"{what} settings", u.settings, m["settings"])
    expect(f"{what} org_id", u.org_id, m["org_id"])
    expect(f"{what} email_domain", u.email_domain, "example.com")


def check_orders(what, orders):
    got = {o.id: o for o in orders}
    expect(f"{what}: order ids", sorted(got), sorted(model.orders))
    for oid, o in got.items():
        shape.expect_amount(f"{what}: order {oid} amount", getattr(o, AMOUNT), model.orders[oid]["cents"])
        expect(f"{what}: order {oid} status", o.status, model.orders[oid]["status"])


def check_totals(what, rows):
    got = {email: (total, n) for email, total, n in rows}
    want = model.totals()
    expect(f"{what}: users with orders", sorted(got), sorted(want))
    for email, (total, n) in got.items():
        shape.expect_amount(f"{what}: total of {email}", total, want[email][0])
        expect(f"{what}: order count of {email}", n, want[email][1])


def create_orgs():
    for o in Org.objects.bulk_create([Org(name=f"{env.tag}-org-{k}") for k in range(2)]):
        model.orgs[o.id] = o.name


def create_org():
    """One more org while the migrations run (orgs.slug, never named here, is given lower(name)
    by pgshift)."""
    o = Org.objects.create(name=f"{env.tag}-org-{len(model.orgs)}")
    model.orgs[o.id] = o.name


def insert_users():
    fields = [model.new_user_fields() for _ in range(3)]
    users = User.objects.bulk_create([
        User(org_id=f["org_id"], email=f["email"], login_count=0, settings=f["settings"], **{NAME: f["name"]})
        for f in fields])
    for u, f in zip(users, fields):
        model.add_user(u.id, f)


def upsert_users():
    existing = model.user()
    fresh = model.new_user_fields()
    new_name, new_settings = renamed(existing["name"]), model.settings()
    kept, added = User.objects.bulk_create(
        [User(email=existing["email"], org_id=existing["org_id"], settings=new_settings, **{NAME: new_name}),
         User(email=fresh["email"], org_id=fresh["org_id"], settings=fresh["settings"], **{NAME: fresh["name"]})],
        update_conflicts=True, unique_fields=["email"], update_fields=[NAME, "settings"])
    existing["name"], existing["settings"] = new_name, new_settings
    model.add_user(added.id, fresh)
    expect("id of the upserted existing user", kept.id, existing["id"])


def get_user():
    m = model.user()
    u = User.objects.select_related("org").get(email=m["email"])
    check_user("get_user", u, m)
    expect("get_user org name", u.org.name, model.orgs[m["org_id"]])


def rename_user():
    m = model.user()
    u = User.objects.get(pk=m["id"])
    check_user("rename_user before", u, m)
    setattr(u, NAME, renamed(m["name"]))
    u.save(update_fields=[NAME])
    m["name"] = renamed(m["name"])


def increment_login():
    m = model.user()
    expect("users updated", User.objects.filter(pk=m["id"]).update(login_count=F("login_count") + 1), 1)
    m["login_count"] += 1


def update_settings():
    m = model.user()
    u = User.objects.get(pk=m["id"])
    u.settings = model.settings()
    u.save()
    m["settings"] = u.settings


def filter_json():
    got = sorted(mine().filter(settings__theme="dark").values_list("email", flat=True))
    expect("users with the dark theme", got,
           sorted(e for e, u in model.users.items() if u["settings"]["theme"] == "dark"))


def filter_by_name():
    m = model.user()
    expect(f"users with that {NAME}", list(mine().filter(**{NAME: m["name"]}).values_list("email", flat=True)),
           [m["email"]])


def insert_orders():
    picks = [(model.user(), model.cents()) for _ in range(3)]
    orders = Order.objects.bulk_create(
        [Order(user_id=u["id"], status="new", **{AMOUNT: shape.amount(c)}) for u, c in picks])
    for o, (u, c) in zip(orders, picks):
        model.orders[o.id] = {"email": u["email"], "cents": c, "status": "new"}


def add_to_amount():
    oid = model.order_id()
    expect("orders updated", Order.objects.filter(pk=oid).update(**{AMOUNT: F(AMOUNT) + shape.unit()}), 1)
    model.orders[oid]["cents"] += 100


def set_status():
    oid = model.order_id()
    status = model.rng.choice(["paid", "shipped", "cancelled"])
    expect("orders updated", Order.objects.filter(pk=oid).update(status=status), 1)
    model.orders[oid]["status"] = status


def orders_with_users():
    orders = list(my_orders().select_related("user__org"))
    check_orders("orders_with_users", orders)
    for o in orders:
        m = model.users[model.orders[o.id]["email"]]
        expect(f"order {o.id} user {NAME}", getattr(o.user, NAME), m["name"])
        expect(f"order {o.id} org name", o.user.org.name, model.orgs[m["org_id"]])


def users_with_orders():
    users = list(mine().select_related("org").prefetch_related("orders"))
    expect("users_with_orders emails", sorted(u.email for u in users), sorted(model.users))
    for u in users:
        m = model.users[u.email]
        check_user("users_with_orders", u, m)
        expect("users_with_orders org name", u.org.name, model.orgs[m["org_id"]])
        want_ids = sorted(i for i, o in model.orders.items() if o["email"] == u.email)
        expect(f"order ids of {u.email}", sorted(o.id for o in u.orders.all()), want_ids)


def paginate_users():
    order = model.by_name_order()
    offset = model.rng.randrange(0, max(1, len(order)))
    got = list(mine().order_by(NAME, "email").values_list("email", flat=True)[offset:offset + 5])
    expect(f"page at offset {offset} ordered by {NAME}", got, order[offset:offset + 5])


def totals_by_user():
    rows = my_orders().values("user__email").annotate(total=Sum(AMOUNT), n=Count("id")).order_by()
    check_totals("totals_by_user", [(row["user__email"], row["total"], row["n"]) for row in rows])


def cte_totals():
    sql = (f"with totals as (select user_id, sum({AMOUNT}) as total, count(*) as n from orders group by user_id) "
           "select u.email, t.total, t.n from users u join totals t on t.user_id = u.id where u.email like %s")
    with connection.cursor() as c:
        c.execute(sql, [PREFIX + "%"])
        check_totals("cte_totals", c.fetchall())


def savepoint_txn():
    u, cents = model.user(), model.cents()
    with transaction.atomic():
        o = Order.objects.create(user_id=u["id"], status="new", **{AMOUNT: shape.amount(cents)})
        try:
            with transaction.atomic():
                Order.objects.filter(pk=o.pk).update(**{AMOUNT: F(AMOUNT) + 5 * shape.unit()})
                Order.objects.create(user_id=u["id"], status="new", **{AMOUNT: shape.amount(cents)})
                raise RollbackToSavepoint()
        except RollbackToSavepoint:
            pass
        o.refresh_from_db()
        o.status = "paid"
        o.save(update_fields=["status"])
    model.orders[o.id] = {"email": u["email"], "cents": cents, "status": "paid"}
    shape.expect_amount("amount after rollback to savepoint", getattr(o, AMOUNT), cents)


def stream_orders():
    check_orders("stream_orders", list(my_orders().order_by("id").iterator(chunk_size=4)))


def raw_join_unqualified():
    if OLD:
        sql = ("select u.id, u.name, o.name as org_name from users u join orgs o on o.id = u.org_id "
               "where u.email like %s")
    else:  # for a new-shape client `name` can only be orgs.name
        sql = ("select u.id, full_name, name as org_name from users u join orgs o on o.id = u.org_id "
               "where u.email like %s")
    users = list(User.objects.raw(sql, [PREFIX + "%"]))
    by_id = {u["id"]: u for u in model.users.values()}
    expect("raw join user ids", sorted(u.id for u in users), sorted(by_id))
    for u in users:
        expect(f"raw join {NAME} of user {u.id}", getattr(u, NAME), by_id[u.id]["name"])
        expect(f"raw join org name of user {u.id}", u.org_name, model.orgs[by_id[u.id]["org_id"]])


def check_big_orders(what, rows):
    """(id, amount) rows of the orders above 1000.00, by amount descending then id."""
    want = sorted((o for o in model.orders if model.orders[o]["cents"] > 100000),
                  key=lambda o: (-model.orders[o]["cents"], o))
    expect(f"{what}: ids by amount", [oid for oid, _ in rows], want)
    for oid, amount in rows:
        shape.expect_amount(f"{what}: order {oid} amount", amount, model.orders[oid]["cents"])


def big_orders():
    check_big_orders("big_orders", list(my_orders().filter(**{f"{AMOUNT}__gt": shape.amount(100000)})
                                        .order_by(f"-{AMOUNT}", "id").values_list("id", AMOUNT)))


def cte_big_orders():
    sql = (f"with big as (select id, user_id, {AMOUNT} from orders where {AMOUNT} > %s) "
           f"select id, {AMOUNT} from big where user_id in (select id from users where email like %s) "
           f"order by {AMOUNT} desc, id")
    with connection.cursor() as c:
        c.execute(sql, [shape.amount(100000), PREFIX + "%"])
        check_big_orders("cte_big_orders", c.fetchall())


def delete_order():
    oid = model.order_id()
    deleted, _ = Order.objects.filter(pk=oid).delete()
    model.orders.pop(oid)
    expect("orders deleted", deleted, 1)


def prune_users():
    email = model.oldest_beyond_limit()
    if email is None:
        raise Skip()
    User.objects.get(pk=model.users[email]["id"]).delete()
    model.drop_user(email)


def remember_statement(execute, sql, params, many, context):
    """An execute_wrapper keeping the failing statement on the error, for the battery's log."""
    try:
        return execute(sql, params, many, context)
    except Exception as e:
        e.battery_statement = sql
        raise


def on_error():
    """atomic() rolled back already; a broken connection is closed so that the next query opens one."""
    connection.close_if_unusable_or_obsolete()


OPS = [("create_org", create_org), ("insert_users", insert_users), ("get_user", get_user), ("insert_orders", insert_orders),
       ("upsert_users", upsert_users), ("rename_user", rename_user), ("increment_login", increment_login),
       ("update_settings", update_settings), ("add_to_amount", add_to_amount), ("set_status", set_status),
       ("filter_json", filter_json), ("filter_by_name", filter_by_name), ("orders_with_users", orders_with_users),
       ("users_with_orders", users_with_orders), ("paginate_users", paginate_users),
       ("totals_by_user", totals_by_user), ("cte_totals", cte_totals), ("cte_big_orders", cte_big_orders),
       ("savepoint_txn", savepoint_txn),
       ("stream_orders", stream_orders), ("raw_join_unqualified", raw_join_unqualified),
       ("big_orders", big_orders), ("delete_order", delete_order), ("prune_users", prune_users)]

if __name__ == "__main__":
    with connection.execute_wrapper(remember_statement):
        r.run("create_orgs", create_orgs, on_error)
        if model.orgs:
            r.loop(OPS, on_error)
    r.finish()
