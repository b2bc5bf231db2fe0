// sequelize_app.js — battery app 4: Sequelize 6 on node-postgres. Models with `schema: 'app'`
// whose attributes follow BATTERY_SHAPE (name / amount integer, or full_name / amount_decimal
// DECIMAL(12,2)); bulkCreate (multi-row INSERT … RETURNING) with and without
// updateOnDuplicate (ON CONFLICT (email) DO UPDATE), include (joins of orders, users, orgs),
// limit/offset, fn('sum') aggregates, increment(), save() of changed fields, managed
// transactions with a nested one (a savepoint) rolled back, JSONB read/write/nested where,
// destroy(), and raw queries (a CTE and a join of users and orgs). Sequelize has no cursor API,
// so this app has no server-side cursor. Every read is checked against the model (harness.js).
'use strict';

const { Sequelize, DataTypes, Op, QueryTypes } = require('sequelize');
const { Runner, Skip, expect, renamed } = require('./harness');

const r = new Runner();
const { env, shape, model } = r;
const NAME = shape.nameCol;
const AMOUNT = shape.amountCol;
const LIKE = `${env.tag}-%`;

const sequelize = new Sequelize(env.db, env.user, env.password, {
  host: env.host,
  port: env.port,
  dialect: 'postgres',
  logging: false,
  dialectOptions: { application_name: env.tag, options: shape.options() },
  pool: { max: 2, min: 1 },
});

const Org = sequelize.define('Org', {
  id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
  name: { type: DataTypes.TEXT, allowNull: false, unique: true },
}, { schema: 'app', tableName: 'orgs', timestamps: false });

const User = sequelize.define('User', {
  id: { type: DataTypes.INTEGER, primaryKey: true, autoIncrement: true },
  orgId: { type: DataTypes.BIGINT, allowNull: false, field: 'org_id' },
  email: { type: DataTypes.TEXT, allowNull: false, unique: true },
  [NAME]: { type: DataTypes.TEXT, allowNull: false },
  loginCount: {
    type: shape.old ? DataTypes.INTEGER : DataTypes.BIGINT, allowNull: false, defaultValue: 0, field: 'login_count',
  },
  settings: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
}, { schema: 'app', tableName: 'users', timestamps: true, createdAt: 'created_at', updatedAt: 'updated_at' });

const Order = sequelize.define('Order', {
  id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
  userId: { type: DataTypes.INTEGER, allowNull: false, field: 'user_id' },
  [AMOUNT]: { type: shape.old ? DataTypes.INTEGER : DataTypes.DECIMAL(12, 2), allowNull: false },
  status: { type: DataTypes.ENUM('new', 'paid', 'shipped', 'cancelled'), allowNull: false, defaultValue: 'new' },
  note: { type: DataTypes.TEXT },
}, { schema: 'app', tableName: 'orders', timestamps: false });

User.belongsTo(Org, { foreignKey: 'orgId' });
Org.hasMany(User, { foreignKey: 'orgId' });
Order.belongsTo(User, { foreignKey: 'userId' });
User.hasMany(Order, { foreignKey: 'userId', onDelete: 'CASCADE', hooks: false });

class RollbackToSavepoint extends Error {}

function mine() { return { email: { [Op.like]: LIKE } }; }

function myUserIds() { return [...model.users.values()].map((u) => u.id); }

function checkUser(what, u, m) {
  expect(`${what} ${NAME}`, u[NAME], m.name);
  expect(`${what} login_count`, u.loginCount, shape.count(m.loginCount));
  expect(`${what} settings`, u.settings, m.settings);
  expect(`${what} org_id`, u.orgId, m.orgId);
}

function checkOrders(what, orders) {
  expect(`${what}: order ids`, orders.map((o) => o.id).sort(), [...model.orders.keys()].sort());
  for (const o of orders) {
    const m = model.orders.get(o.id);
    shape.expectAmount(`${what}: order ${o.id} amount`, o[AMOUNT], m.cents);
    expect(`${what}: order ${o.id} status`, o.status, m.status);
  }
}

function checkTotals(what, rows) {
  const want = model.totals();
  expect(`${what}: users with orders`, rows.map((row) => row.email).sort(), [...want.keys()].sort());
  for (const row of rows) {
    shape.expectTotal(`${what}: total of ${row.email}`, row.total, want.get(row.email)[0]);
    expect(`${what}: order count of ${row.email}`, row.n, String(want.get(row.email)[1]));
  }
}

async function createOrgs() {
  const orgs = await Org.bulkCreate([0, 1].map((k) => ({ name: `${env.tag}-org-${k}` })), { returning: true });
  for (const o of orgs) model.orgs.set(o.id, o.name);
}

async function insertUsers() {
  const fields = [0, 1, 2].map(() => model.newUserFields());
  const users = await User.bulkCreate(fields.map((f) => ({
    orgId: f.orgId, email: f.email, [NAME]: f.name, loginCount: 0, settings: f.settings,
  })), { returning: true });
  users.forEach((u, i) => model.addUser(u.id, fields[i]));
  users.forEach((u, i) => expect(`${NAME} returned by the insert`, u[NAME], fields[i].name));
}

async function upsertUsers() {
  const existing = model.user();
  const fresh = model.newUserFields();
  const rows = [
    { email: existing.email, orgId: existing.orgId, [NAME]: renamed(existing.name), settings: model.settings() },
    { email: fresh.email, orgId: fresh.orgId, [NAME]: fresh.name, settings: fresh.settings },
  ];
  const got = await User.bulkCreate(rows, {
    updateOnDuplicate: [NAME, 'settings'], conflictAttributes: ['email'], returning: true,
  });
  existing.name = rows[0][NAME];
  existing.settings = rows[0].settings;
  model.addUser(got[1].id, fresh);
  expect('id of the upserted existing user', got[0].id, existing.id);
  expect('login_count returned by the upsert', got[0].loginCount, shape.count(existing.loginCount));
}

async function getUser() {
  const m = model.user();
  const u = await User.findOne({ where: { email: m.email }, include: [Org] });
  checkUser('get_user', u, m);
  expect('get_user org name', u.Org.name, model.orgs.get(m.orgId));
}

async function renameUser() {
  const m = model.user();
  const u = await User.findByPk(m.id);
  checkUser('rename_user before', u, m);
  u[NAME] = renamed(m.name);
  await u.save();
  m.name = renamed(m.name);
}

async function incrementLogin() {
  const m = model.user();
  await User.increment('loginCount', { where: { id: m.id } });
  m.loginCount += 1;
}

async function updateSettings() {
  const m = model.user();
  const settings = model.settings();
  const [n] = await User.update({ settings }, { where: { id: m.id } });
  m.settings = settings;
  expect('users updated', n, 1);
}

async function filterJson() {
  const got = await User.findAll({ attributes: ['email'], where: { ...mine(), settings: { theme: 'dark' } } });
  expect('users with the dark theme', got.map((u) => u.email).sort(),
    [...model.users.values()].filter((u) => u.settings.theme === 'dark').map((u) => u.email).sort());
}

async function filterByName() {
  const m = model.user();
  const got = await User.findAll({ attributes: ['email'], where: { ...mine(), [NAME]: m.name } });
  expect(`users with that ${NAME}`, got.map((u) => u.email), [m.email]);
}

async function insertOrders() {
  const picks = [0, 1, 2].map(() => [model.user(), model.cents()]);
  const orders = await Order.bulkCreate(
    picks.map(([u, c]) => ({ userId: u.id, [AMOUNT]: shape.amount(c), status: 'new' })), { returning: true });
  orders.forEach((o, i) => model.orders.set(o.id, { email: picks[i][0].email, cents: picks[i][1], status: 'new' }));
  orders.forEach((o, i) => shape.expectAmount('amount returned by the insert', o[AMOUNT], picks[i][1]));
}

async function addToAmount() {
  const id = model.orderId();
  const [[rows]] = await Order.increment({ [AMOUNT]: shape.unit() }, { where: { id } });
  model.orders.get(id).cents += 100;
  shape.expectAmount('amount returned by increment', rows[0][AMOUNT], model.orders.get(id).cents);
}

async function setStatus() {
  const id = model.orderId();
  const status = model.pick(['paid', 'shipped', 'cancelled']);
  await Order.update({ status }, { where: { id } });
  model.orders.get(id).status = status;
}

async function ordersWithUsers() {
  const orders = await Order.findAll({ include: [{ model: User, where: mine(), include: [Org] }] });
  checkOrders('orders_with_users', orders);
  for (const o of orders) {
    const m = model.users.get(model.orders.get(o.id).email);
    expect(`order ${o.id} user ${NAME}`, o.User[NAME], m.name);
    expect(`order ${o.id} org name`, o.User.Org.name, model.orgs.get(m.orgId));
  }
}

async function usersWithOrders() {
  const users = await User.findAll({ where: mine(), include: [Org, Order] });
  expect('users_with_orders emails', users.map((u) => u.email).sort(), [...model.users.keys()].sort());
  for (const u of users) {
    const m = model.users.get(u.email);
    checkUser('users_with_orders', u, m);
    expect('users_with_orders org name', u.Org.name, model.orgs.get(m.orgId));
    expect(`order ids of ${u.email}`, u.Orders.map((o) => o.id).sort(),
      [...model.orders.entries()].filter(([, o]) => o.email === u.email).map(([id]) => id).sort());
  }
}

async function paginateUsers() {
  const order = model.byNameOrder();
  const offset = Math.floor(model.random() * Math.max(1, order.length));
  const got = await User.findAll({
    attributes: ['email'], where: mine(), order: [[NAME, 'ASC'], ['email', 'ASC']], limit: 5, offset,
  });
  expect(`page at offset ${offset} ordered by ${NAME}`, got.map((u) => u.email), order.slice(offset, offset + 5));
}

async function totalsByUser() {
  const ids = myUserIds();
  if (ids.length === 0) throw new Skip();
  const rows = await Order.findAll({
    attributes: ['userId', [sequelize.fn('sum', sequelize.col(AMOUNT)), 'total'],
      [sequelize.fn('count', sequelize.col('id')), 'n']],
    where: { userId: { [Op.in]: ids } },
    group: ['userId'],
    raw: true,
  });
  checkTotals('totals_by_user', rows.map((row) => ({ ...row, email: model.userById(row.userId).email })));
}

async function cteTotals() {
  const rows = await sequelize.query(
    `with totals as (select user_id, sum(${AMOUNT}) as total, count(*) as n from app.orders group by user_id)
     select u.email, t.total, t.n from app.users u join totals t on t.user_id = u.id where u.email like $1`,
    { bind: [LIKE], type: QueryTypes.SELECT });
  checkTotals('cte_totals', rows);
}

async function savepointTxn() {
  const u = model.user();
  const cents = model.cents();
  let id;
  let got;
  await sequelize.transaction(async (t) => {
    const o = await Order.create({ userId: u.id, [AMOUNT]: shape.amount(cents), status: 'new' }, { transaction: t });
    id = o.id;
    try {
      await sequelize.transaction({ transaction: t }, async (t2) => {
        await Order.increment({ [AMOUNT]: 7 * shape.unit() }, { where: { id }, transaction: t2 });
        throw new RollbackToSavepoint();
      });
    } catch (e) {
      if (!(e instanceof RollbackToSavepoint)) throw e;
    }
    await o.reload({ transaction: t });
    got = o[AMOUNT];
    o.status = 'paid';
    await o.save({ transaction: t });
  });
  model.orders.set(id, { email: u.email, cents, status: 'paid' });
  shape.expectAmount('amount after rollback to savepoint', got, cents);
}

async function rawJoinUnqualified() {
  const sql = shape.old
    ? `select u.id, u.name, o.name as org_name from app.users u join app.orgs o on o.id = u.org_id
       where u.email like $1`
    // for a new-shape client `name` can only be orgs.name
    : `select u.id, full_name, name as org_name from app.users u join app.orgs o on o.id = u.org_id
       where u.email like $1`;
  const rows = await sequelize.query(sql, { bind: [LIKE], type: QueryTypes.SELECT });
  expect('raw join user ids', rows.map((row) => row.id).sort(), myUserIds().sort());
  for (const row of rows) {
    const m = model.userById(row.id);
    expect(`raw join ${NAME} of user ${row.id}`, row[NAME], m.name);
    expect(`raw join org name of user ${row.id}`, row.org_name, model.orgs.get(m.orgId));
  }
}

async function bigOrders() {
  const ids = myUserIds();
  if (ids.length === 0) throw new Skip();
  const rows = await Order.findAll({
    attributes: ['id', AMOUNT],
    where: { userId: { [Op.in]: ids }, [AMOUNT]: { [Op.gt]: shape.amount(100000) } },
    order: [[AMOUNT, 'DESC'], ['id', 'ASC']],
  });
  expect('big orders by amount', rows.map((o) => o.id), model.bigOrderIds());
  for (const o of rows) shape.expectAmount(`big order ${o.id} amount`, o[AMOUNT], model.orders.get(o.id).cents);
}

async function deleteOrder() {
  const id = model.orderId();
  const n = await Order.destroy({ where: { id } });
  model.orders.delete(id);
  expect('orders deleted', n, 1);
}

async function pruneUsers() {
  const email = model.oldestBeyondLimit();
  if (email === null) throw new Skip();
  const u = await User.findByPk(model.users.get(email).id);
  await u.destroy();
  model.dropUser(email);
}

const OPS = [['insert_users', insertUsers], ['get_user', getUser], ['insert_orders', insertOrders],
  ['upsert_users', upsertUsers], ['rename_user', renameUser], ['increment_login', incrementLogin],
  ['update_settings', updateSettings], ['add_to_amount', addToAmount], ['set_status', setStatus],
  ['filter_json', filterJson], ['filter_by_name', filterByName], ['orders_with_users', ordersWithUsers],
  ['users_with_orders', usersWithOrders], ['paginate_users', paginateUsers], ['totals_by_user', totalsByUser],
  ['cte_totals', cteTotals], ['savepoint_txn', savepointTxn], ['raw_join_unqualified', rawJoinUnqualified],
  ['big_orders', bigOrders], ['delete_order', deleteOrder], ['prune_users', pruneUsers]];

(async () => {
  await r.run('create_orgs', createOrgs);
  if (model.orgs.size > 0) await r.loop(OPS);
  await sequelize.close();
  r.finish();
})();
