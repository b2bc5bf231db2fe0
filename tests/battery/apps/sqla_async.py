"""sqla_async.py — battery app 2: SQLAlchemy 2 ORM, asyncio, on asyncpg (postgresql+asyncpg).
asyncpg prepares every statement server-side and caches it per connection, so a phase change
meets statements prepared before it. AsyncSession unit of work, ORM bulk INSERT … RETURNING,
an ON CONFLICT upsert, selectinload / joinedload, pagination, aggregates, a .cte(), savepoints,
stream_scalars (an asyncpg cursor), JSONB read/write/filter, deletes and a raw text() join.
Every read is checked against the model (harness.py); see run.py for the protocol."""

import asyncio

from sqlalchemy import URL, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import joinedload, selectinload

from harness import Runner, Skip, expect, renamed
from sqla_models import AMOUNT, NAME, Order, Org, User

r = Runner()
env, shape, model = r.env, r.shape, r.model
LIKE = f"{env.tag}-%"
engine = create_async_engine(
    URL.create("postgresql+asyncpg", username=env.user, password=env.password, host=env.host, port=env.port,
               database=env.db),
    connect_args={"server_settings": {"application_name": env.tag,
                                      **({"pgshift.shape": "old"} if shape.old else {})}},
    pool_size=2, pool_pre_ping=True)
Session = async_sessionmaker(engine, expire_on_commit=False)


class RollbackToSavepoint(Exception):
    pass


def check_user(what, u, m):
    expect(f"{what} {NAME.key}", getattr(u, NAME.key), m["name"])
    expect(f"{what} login_count", u.login_count, m["login_count"])
    expect(f"{what} settings", u.settings, m["settings"])
    expect(f"{what} org_id", u.org_id, m["org_id"])
    expect(f"{what} email_domain", u.email_domain, "example.com")


def check_orders(what, orders):
    got = {o.id: o for o in orders}
    expect(f"{what}: order ids", sorted(got), sorted(model.orders))
    for oid, o in got.items():
        m = model.orders[oid]
        shape.expect_amount(f"{what}: order {oid} amount", getattr(o, AMOUNT.key), m["cents"])
        expect(f"{what}: order {oid} status", o.status, m["status"])


def check_totals(what, rows):
    got = {row[0]: (row[1], row[2]) for row in rows}
    want = model.totals()
    expect(f"{what}: users with orders", sorted(got), sorted(want))
    for email, (total, n) in got.items():
        shape.expect_amount(f"{what}: total of {email}", total, want[email][0])
        expect(f"{what}: order count of {email}", n, want[email][1])


async def create_orgs():
    async with Session.begin() as s:
        orgs = [Org(name=f"{env.tag}-org-{k}") for k in range(2)]
        s.add_all(orgs)
        await s.flush()
        for o in orgs:
            model.orgs[o.id] = o.name


async def insert_users():
    fields = [model.new_user_fields() for _ in range(3)]
    rows = [{"org_id": f["org_id"], "email": f["email"], NAME.key: f["name"], "login_count": 0,
             "settings": f["settings"]} for f in fields]
    async with Session.begin() as s:
        got = (await s.execute(insert(User).returning(User.id, User.email_domain, sort_by_parameter_order=True),
                               rows)).all()
    for f, row in zip(fields, got):
        model.add_user(row.id, f)
    for row in got:
        expect("email_domain returned by the insert", row.email_domain, "example.com")


async def upsert_users():
    existing = model.user()
    fresh = model.new_user_fields()
    rows = [{"email": existing["email"], "org_id": existing["org_id"], NAME.key: renamed(existing["name"]),
             "settings": model.settings()},
            {"email": fresh["email"], "org_id": fresh["org_id"], NAME.key: fresh["name"],
             "settings": fresh["settings"]}]
    stmt = pg_insert(User).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[User.email],
        set_={NAME.key: stmt.excluded[NAME.key], "settings": stmt.excluded.settings},
    ).returning(User.id, User.email, NAME)
    async with Session.begin() as s:
        got = {row.email: row for row in await s.execute(stmt)}
    expect("upserted emails", sorted(got), sorted([existing["email"], fresh["email"]]))
    existing["name"], existing["settings"] = rows[0][NAME.key], rows[0]["settings"]
    model.add_user(got[fresh["email"]].id, fresh)
    for e in got:
        expect(f"upsert returned {NAME.key}", getattr(got[e], NAME.key), model.users[e]["name"])


async def get_user():
    m = model.user()
    async with Session() as s:
        u = (await s.scalars(select(User).where(User.email == m["email"]))).one()
        check_user("get_user", u, m)


async def rename_user():
    m = model.user()
    async with Session.begin() as s:
        u = await s.get(User, m["id"])
        check_user("rename_user before", u, m)
        setattr(u, NAME.key, renamed(m["name"]))
    m["name"] = renamed(m["name"])


async def increment_login():
    m = model.user()
    async with Session.begin() as s:
        got = (await s.execute(update(User).where(User.id == m["id"])
                               .values(login_count=User.login_count + 1).returning(User.login_count))).scalar_one()
    m["login_count"] += 1
    expect("login_count returned by the update", got, m["login_count"])


async def update_settings():
    m = model.user()
    settings = model.settings()
    async with Session.begin() as s:
        await s.execute(update(User).where(User.id == m["id"]).values(settings=settings))
    m["settings"] = settings


async def filter_json():
    async with Session() as s:
        got = await s.scalars(select(User.email).where(User.email.like(LIKE), User.settings["lang"].astext == "fr"))
        want = sorted(e for e, u in model.users.items() if u["settings"]["lang"] == "fr")
        expect("users with lang fr", sorted(got), want)


async def filter_by_name():
    m = model.user()
    async with Session() as s:
        got = (await s.scalars(select(User.email).where(NAME == m["name"], User.email.like(LIKE)))).all()
    expect(f"users with that {NAME.key}", got, [m["email"]])


async def insert_orders():
    u = model.user()
    cents = [model.cents() for _ in range(3)]
    async with Session.begin() as s:
        user = await s.get(User, u["id"], options=[selectinload(User.orders)])
        new = [Order(status="new", **{AMOUNT.key: shape.amount(c)}) for c in cents]
        user.orders.extend(new)
        await s.flush()
        ids = [o.id for o in new]
    for oid, c in zip(ids, cents):
        model.orders[oid] = {"email": u["email"], "cents": c, "status": "new"}


async def add_to_amount():
    oid = model.order_id()
    async with Session.begin() as s:
        order = await s.get(Order, oid)
        setattr(order, AMOUNT.key, getattr(order, AMOUNT.key) + shape.unit())
    model.orders[oid]["cents"] += 100


async def set_status():
    oid = model.order_id()
    status = model.rng.choice(["paid", "shipped", "cancelled"])
    async with Session.begin() as s:
        await s.execute(update(Order).where(Order.id == oid).values(status=status))
    model.orders[oid]["status"] = status


async def orders_with_users():
    async with Session() as s:
        orders = (await s.scalars(select(Order).join(Order.user).where(User.email.like(LIKE))
                                  .options(joinedload(Order.user).joinedload(User.org)))).unique().all()
    check_orders("orders_with_users", orders)
    for o in orders:
        u = model.users[model.orders[o.id]["email"]]
        expect(f"order {o.id} user {NAME.key}", getattr(o.user, NAME.key), u["name"])
        expect(f"order {o.id} org name", o.user.org.name, model.orgs[u["org_id"]])


async def users_with_orders():
    async with Session() as s:
        users = (await s.scalars(select(User).where(User.email.like(LIKE))
                                 .options(selectinload(User.orders), joinedload(User.org)))).unique().all()
    expect("users_with_orders emails", sorted(u.email for u in users), sorted(model.users))
    for u in users:
        m = model.users[u.email]
        check_user("users_with_orders", u, m)
        expect("users_with_orders org name", u.org.name, model.orgs[m["org_id"]])
        expect(f"order ids of {u.email}", sorted(o.id for o in u.orders),
               sorted(i for i, o in model.orders.items() if o["email"] == u.email))


async def paginate_users():
    order = model.by_name_order()
    offset = model.rng.randrange(0, max(1, len(order)))
    async with Session() as s:
        got = (await s.scalars(select(User.email).where(User.email.like(LIKE)).order_by(NAME, User.email)
                               .limit(5).offset(offset))).all()
    expect(f"page at offset {offset} ordered by {NAME.key}", got, order[offset:offset + 5])


async def totals_by_user():
    async with Session() as s:
        rows = (await s.execute(select(User.email, func.sum(AMOUNT), func.count(Order.id)).join(Order.user)
                                .where(User.email.like(LIKE)).group_by(User.email))).all()
    check_totals("totals_by_user", rows)


async def cte_totals():
    mine = select(User.id).where(User.email.like(LIKE)).cte("mine")
    totals = (select(Order.user_id, func.sum(AMOUNT).label("total"), func.count().label("n"))
              .where(Order.user_id.in_(select(mine.c.id))).group_by(Order.user_id).cte("totals"))
    async with Session() as s:
        rows = (await s.execute(select(User.email, totals.c.total, totals.c.n)
                                .join(totals, totals.c.user_id == User.id))).all()
    check_totals("cte_totals", rows)


async def savepoint_txn():
    u, cents = model.user(), model.cents()
    async with Session.begin() as s:
        order = Order(user_id=u["id"], status="new", **{AMOUNT.key: shape.amount(cents)})
        s.add(order)
        await s.flush()
        oid = order.id  # the rollback to the savepoint expires `order`
        try:
            async with s.begin_nested():
                await s.execute(update(Order).where(Order.id == oid).values({AMOUNT: AMOUNT * 2}))
                raise RollbackToSavepoint()
        except RollbackToSavepoint:
            pass
        got = await s.scalar(select(AMOUNT).where(Order.id == oid))
        await s.execute(update(Order).where(Order.id == oid).values(status="shipped"))
    model.orders[oid] = {"email": u["email"], "cents": cents, "status": "shipped"}
    shape.expect_amount("amount after rollback to savepoint", got, cents)


async def stream_orders():
    async with Session() as s:
        result = await s.stream_scalars(select(Order).join(Order.user).where(User.email.like(LIKE))
                                        .order_by(Order.id).execution_options(yield_per=4))
        orders = [o async for o in result]
    check_orders("stream_orders", orders)


async def raw_join_unqualified():
    if shape.old:
        sql = ("select u.id, u.name, o.name as org_name from app.users u join app.orgs o on o.id = u.org_id "
               "where u.email like :p")
    else:  # for a new-shape client `name` can only be orgs.name
        sql = ("select u.id, full_name, name as org_name from app.users u join app.orgs o on o.id = u.org_id "
               "where u.email like :p")
    async with Session() as s:
        rows = (await s.execute(text(sql), {"p": LIKE})).all()
    by_id = {u["id"]: u for u in model.users.values()}
    expect("raw join user ids", sorted(row[0] for row in rows), sorted(by_id))
    for uid, name, org in rows:
        expect(f"raw join {shape.name_col} of user {uid}", name, by_id[uid]["name"])
        expect(f"raw join org name of user {uid}", org, model.orgs[by_id[uid]["org_id"]])


async def big_orders():
    async with Session() as s:
        rows = (await s.execute(select(Order.id, AMOUNT).join(Order.user)
                                .where(User.email.like(LIKE), AMOUNT > shape.amount(100000))
                                .order_by(AMOUNT.desc(), Order.id))).all()
    want = sorted((o for o in model.orders if model.orders[o]["cents"] > 100000),
                  key=lambda o: (-model.orders[o]["cents"], o))
    expect("big orders by amount", [row[0] for row in rows], want)
    for oid, amount in rows:
        shape.expect_amount(f"big order {oid} amount", amount, model.orders[oid]["cents"])


async def delete_order():
    oid = model.order_id()
    async with Session.begin() as s:
        await s.delete(await s.get(Order, oid))
    model.orders.pop(oid)


async def prune_users():
    email = model.oldest_beyond_limit()
    if email is None:
        raise Skip()
    async with Session.begin() as s:
        await s.execute(delete(User).where(User.id == model.users[email]["id"]))
    model.drop_user(email)


async def on_error():
    """Nothing to do: each operation's session rolled back as it closed, and the pool keeps the
    connection (with asyncpg's statement cache), as an application's would."""


OPS = [("insert_users", insert_users), ("get_user", get_user), ("insert_orders", insert_orders),
       ("upsert_users", upsert_users), ("rename_user", rename_user), ("increment_login", increment_login),
       ("update_settings", update_settings), ("add_to_amount", add_to_amount), ("set_status", set_status),
       ("filter_json", filter_json), ("filter_by_name", filter_by_name), ("orders_with_users", orders_with_users),
       ("users_with_orders", users_with_orders), ("paginate_users", paginate_users),
       ("totals_by_user", totals_by_user), ("cte_totals", cte_totals), ("savepoint_txn", savepoint_txn),
       ("stream_orders", stream_orders), ("raw_join_unqualified", raw_join_unqualified),
       ("big_orders", big_orders), ("delete_order", delete_order), ("prune_users", prune_users)]


async def main():
    await r.run_async("create_orgs", create_orgs, on_error)
    if model.orgs:
        await r.loop_async(OPS, on_error)
    await engine.dispose()
    r.finish()


if __name__ == "__main__":
    asyncio.run(main())
