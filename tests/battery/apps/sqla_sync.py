"""sqla_sync.py — battery app 1: SQLAlchemy 2 ORM, sync, on psycopg 3 (postgresql+psycopg).
Unit-of-work inserts and updates, ORM bulk INSERT … RETURNING, an ON CONFLICT upsert, joinedload,
pagination, GROUP BY aggregates, .cte()s (one passing the amount column through), begin_nested() savepoints, yield_per (a psycopg
server-side cursor), JSONB read/write/filter, deletes and a raw text() join of users and orgs.
Every read is checked against the model (harness.py); see run.py for the protocol."""

from sqlalchemy import URL, create_engine, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import joinedload, sessionmaker

from harness import Runner, Skip, expect, renamed
from sqla_models import AMOUNT, NAME, Order, Org, User

r = Runner()
env, shape, model = r.env, r.shape, r.model
LIKE = f"{env.tag}-%"
engine = create_engine(
    URL.create("postgresql+psycopg", username=env.user, password=env.password, host=env.host, port=env.port,
               database=env.db),
    connect_args={"application_name": env.tag, "options": env.options}, pool_size=2, pool_pre_ping=True)
Session = sessionmaker(engine, expire_on_commit=False)


class RollbackToSavepoint(Exception):
    pass


def check_user(what, u, m):
    expect(f"{what} {NAME.key}", getattr(u, NAME.key), m["name"])
    expect(f"{what} login_count", u.login_count, m["login_count"])
    expect(f"{what} settings", u.settings, m["settings"])
    expect(f"{what} org_id", u.org_id, m["org_id"])
    expect(f"{what} email_domain", u.email_domain, "example.com")


def create_orgs():
    with Session.begin() as s:
        orgs = [Org(name=f"{env.tag}-org-{k}") for k in range(2)]
        s.add_all(orgs)
        s.flush()
        for o in orgs:
            model.orgs[o.id] = o.name


def create_org():
    """One more org while the migrations run: orgs.slug, which this app never names, is added
    with up = lower(name), so pgshift gives this INSERT its value."""
    with Session.begin() as s:
        o = Org(name=f"{env.tag}-org-{len(model.orgs)}")
        s.add(o)
        s.flush()
        model.orgs[o.id] = o.name


def insert_users():
    fields = [model.new_user_fields() for _ in range(3)]
    with Session.begin() as s:
        users = [User(org_id=f["org_id"], email=f["email"], login_count=0, settings=f["settings"],
                      **{NAME.key: f["name"]}) for f in fields]
        s.add_all(users)
        s.flush()
        ids = [(u.id, u.email_domain) for u in users]
    for (uid, domain), f in zip(ids, fields):
        expect("email_domain returned by the insert", domain, "example.com")
        model.add_user(uid, f)


def upsert_users():
    existing = model.user()
    email = existing["email"]
    fresh = model.new_user_fields()
    rows = [{"email": email, "org_id": existing["org_id"], NAME.key: renamed(existing["name"]),
             "settings": model.settings()},
            {"email": fresh["email"], "org_id": fresh["org_id"], NAME.key: fresh["name"],
             "settings": fresh["settings"]}]
    stmt = pg_insert(User).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[User.email],
        set_={NAME.key: stmt.excluded[NAME.key], "settings": stmt.excluded.settings},
    ).returning(User.id, User.email, NAME, User.login_count)
    with Session.begin() as s:
        got = {row.email: row for row in s.execute(stmt)}
    expect("upserted emails", sorted(got), sorted([email, fresh["email"]]))
    expect("upsert returned login_count of the existing user", got[email].login_count, existing["login_count"])
    existing["name"], existing["settings"] = rows[0][NAME.key], rows[0]["settings"]
    model.add_user(got[fresh["email"]].id, fresh)
    for e in got:
        expect(f"upsert returned {NAME.key}", getattr(got[e], NAME.key), model.users[e]["name"])


def get_user():
    m = model.user()
    with Session() as s:
        u = s.scalars(select(User).where(User.email == m["email"])).one()
        check_user("get_user", u, m)


def rename_user():
    m = model.user()
    with Session.begin() as s:
        u = s.get(User, m["id"])
        check_user("rename_user before", u, m)
        setattr(u, NAME.key, renamed(m["name"]))
    m["name"] = renamed(m["name"])


def increment_login():
    m = model.user()
    with Session.begin() as s:
        s.execute(update(User).where(User.id == m["id"]).values(login_count=User.login_count + 1))
    m["login_count"] += 1


def update_settings():
    m = model.user()
    settings = model.settings()
    with Session.begin() as s:
        s.get(User, m["id"]).settings = settings
    m["settings"] = settings


def filter_json():
    with Session() as s:
        got = s.scalars(select(User.email).where(User.email.like(LIKE), User.settings["theme"].astext == "dark"))
        want = sorted(e for e, u in model.users.items() if u["settings"]["theme"] == "dark")
        expect("users with the dark theme", sorted(got), want)


def filter_by_name():
    m = model.user()
    with Session() as s:
        got = s.scalars(select(User.email).where(NAME == m["name"], User.email.like(LIKE))).all()
    expect(f"users with that {NAME.key}", got, [m["email"]])


def insert_orders():
    picks = [(model.user(), model.cents()) for _ in range(3)]
    rows = [{"user_id": u["id"], AMOUNT.key: shape.amount(c), "status": "new"} for u, c in picks]
    with Session.begin() as s:
        got = s.execute(insert(Order).returning(Order.id, AMOUNT, Order.status, sort_by_parameter_order=True),
                        rows).all()
    for (u, c), row in zip(picks, got):
        model.orders[row.id] = {"email": u["email"], "cents": c, "status": "new"}
    for (u, c), row in zip(picks, got):
        shape.expect_amount("amount returned by the insert", getattr(row, AMOUNT.key), c)
        expect("status returned by the insert", row.status, "new")


def add_to_amount():
    oid = model.order_id()
    with Session.begin() as s:
        got = s.execute(update(Order).where(Order.id == oid).values({AMOUNT: AMOUNT + shape.unit()})
                        .returning(AMOUNT)).scalar_one()
    model.orders[oid]["cents"] += 100
    shape.expect_amount("amount returned by the update", got, model.orders[oid]["cents"])


def set_status():
    oid = model.order_id()
    status = model.rng.choice(["paid", "shipped", "cancelled"])
    with Session.begin() as s:
        s.get(Order, oid).status = status
    model.orders[oid]["status"] = status


def check_orders(what, orders):
    got = {o.id: o for o in orders}
    expect(f"{what}: order ids", sorted(got), sorted(model.orders))
    for oid, o in got.items():
        m = model.orders[oid]
        shape.expect_amount(f"{what}: order {oid} amount", getattr(o, AMOUNT.key), m["cents"])
        expect(f"{what}: order {oid} status", o.status, m["status"])
        yield o, m


def orders_with_users():
    with Session() as s:
        orders = s.scalars(select(Order).join(Order.user).where(User.email.like(LIKE))
                           .options(joinedload(Order.user).joinedload(User.org))).unique().all()
        for o, m in check_orders("orders_with_users", orders):
            u = model.users[m["email"]]
            expect(f"order {o.id} user {NAME.key}", getattr(o.user, NAME.key), u["name"])
            expect(f"order {o.id} org name", o.user.org.name, model.orgs[u["org_id"]])


def users_with_orgs():
    with Session() as s:
        rows = s.execute(select(User, Org).join(User.org).where(User.email.like(LIKE))).all()
    expect("users_with_orgs emails", sorted(u.email for u, _ in rows), sorted(model.users))
    for u, o in rows:
        m = model.users[u.email]
        check_user("users_with_orgs", u, m)
        expect("users_with_orgs org name", o.name, model.orgs[m["org_id"]])


def paginate_users():
    order = model.by_name_order()
    offset = model.rng.randrange(0, max(1, len(order)))
    with Session() as s:
        got = s.scalars(select(User.email).where(User.email.like(LIKE)).order_by(NAME, User.email)
                        .limit(5).offset(offset)).all()
    expect(f"page at offset {offset} ordered by {NAME.key}", got, order[offset:offset + 5])


def check_totals(what, rows):
    got = {row[0]: (row[1], row[2]) for row in rows}
    want = model.totals()
    expect(f"{what}: users with orders", sorted(got), sorted(want))
    for email, (total, n) in got.items():
        shape.expect_amount(f"{what}: total of {email}", total, want[email][0])
        expect(f"{what}: order count of {email}", n, want[email][1])


def totals_by_user():
    with Session() as s:
        rows = s.execute(select(User.email, func.sum(AMOUNT), func.count(Order.id)).join(Order.user)
                         .where(User.email.like(LIKE)).group_by(User.email)).all()
    check_totals("totals_by_user", rows)


def cte_totals():
    totals = (select(Order.user_id, func.sum(AMOUNT).label("total"), func.count().label("n"))
              .where(AMOUNT >= 0).group_by(Order.user_id).cte("totals"))
    with Session() as s:
        rows = s.execute(select(User.email, totals.c.total, totals.c.n)
                         .join(totals, totals.c.user_id == User.id).where(User.email.like(LIKE))).all()
    check_totals("cte_totals", rows)


def savepoint_txn():
    u, cents = model.user(), model.cents()
    with Session.begin() as s:
        order = Order(user_id=u["id"], status="new", **{AMOUNT.key: shape.amount(cents)})
        s.add(order)
        s.flush()
        try:
            with s.begin_nested():
                s.add(Order(user_id=u["id"], status="new", **{AMOUNT.key: shape.amount(cents)}))
                s.execute(update(Order).where(Order.id == order.id).values({AMOUNT: AMOUNT + 10 * shape.unit()}))
                raise RollbackToSavepoint()
        except RollbackToSavepoint:
            pass
        shape.expect_amount("amount after rollback to savepoint", s.scalar(select(AMOUNT).where(Order.id == order.id)),
                            cents)
        order.status = "paid"
        oid = order.id
    model.orders[oid] = {"email": u["email"], "cents": cents, "status": "paid"}


def stream_orders():
    with Session() as s:
        orders = s.scalars(select(Order).join(Order.user).where(User.email.like(LIKE)).order_by(Order.id)
                           .execution_options(yield_per=4))
        list(check_orders("stream_orders", list(orders)))


def raw_join_unqualified():
    if shape.old:
        sql = ("select u.id, u.name, o.name as org_name from app.users u join app.orgs o on o.id = u.org_id "
               "where u.email like :p")
    else:  # for a new-shape client `name` can only be orgs.name
        sql = ("select u.id, full_name, name as org_name from app.users u join app.orgs o on o.id = u.org_id "
               "where u.email like :p")
    with Session() as s:
        rows = s.execute(text(sql), {"p": LIKE}).all()
    by_id = {u["id"]: u for u in model.users.values()}
    expect("raw join user ids", sorted(row[0] for row in rows), sorted(by_id))
    for uid, name, org in rows:
        expect(f"raw join {shape.name_col} of user {uid}", name, by_id[uid]["name"])
        expect(f"raw join org name of user {uid}", org, model.orgs[by_id[uid]["org_id"]])


def check_big_orders(what, rows):
    """(id, amount) rows of the orders above 1000.00, by amount descending then id."""
    want = sorted((o for o in model.orders if model.orders[o]["cents"] > 100000),
                  key=lambda o: (-model.orders[o]["cents"], o))
    expect(f"{what}: ids by amount", [row[0] for row in rows], want)
    for oid, amount in rows:
        shape.expect_amount(f"{what}: order {oid} amount", amount, model.orders[oid]["cents"])


def big_orders():
    with Session() as s:
        rows = s.execute(select(Order.id, AMOUNT).join(Order.user)
                         .where(User.email.like(LIKE), AMOUNT > shape.amount(100000))
                         .order_by(AMOUNT.desc(), Order.id)).all()
    check_big_orders("big_orders", rows)


def cte_big_orders():
    big = select(Order.id, Order.user_id, AMOUNT).where(AMOUNT > shape.amount(100000)).cte("big")
    amount = big.c[AMOUNT.key]
    with Session() as s:
        rows = s.execute(select(big.c.id, amount).join(User, User.id == big.c.user_id)
                         .where(User.email.like(LIKE)).order_by(amount.desc(), big.c.id)).all()
    check_big_orders("cte_big_orders", rows)


def delete_order():
    oid = model.order_id()
    with Session.begin() as s:
        got = s.execute(delete(Order).where(Order.id == oid).returning(AMOUNT)).scalar_one()
    cents = model.orders.pop(oid)["cents"]
    shape.expect_amount("amount returned by the delete", got, cents)


def prune_users():
    email = model.oldest_beyond_limit()
    if email is None:
        raise Skip()
    with Session.begin() as s:
        s.delete(s.get(User, model.users[email]["id"]))
    model.drop_user(email)


def on_error():
    """Nothing to do: each operation's session rolled back as it closed, and the pool keeps the
    connection, as an application's would."""


OPS = [("create_org", create_org), ("insert_users", insert_users), ("get_user", get_user), ("insert_orders", insert_orders),
       ("upsert_users", upsert_users), ("rename_user", rename_user), ("increment_login", increment_login),
       ("update_settings", update_settings), ("add_to_amount", add_to_amount), ("set_status", set_status),
       ("filter_json", filter_json), ("filter_by_name", filter_by_name), ("orders_with_users", orders_with_users),
       ("users_with_orgs", users_with_orgs), ("paginate_users", paginate_users),
       ("totals_by_user", totals_by_user), ("cte_totals", cte_totals), ("cte_big_orders", cte_big_orders),
       ("savepoint_txn", savepoint_txn),
       ("stream_orders", stream_orders), ("raw_join_unqualified", raw_join_unqualified),
       ("big_orders", big_orders), ("delete_order", delete_order), ("prune_users", prune_users)]

if __name__ == "__main__":
    r.run("create_orgs", create_orgs, on_error)
    if model.orgs:
        r.loop(OPS, on_error)
    r.finish()
