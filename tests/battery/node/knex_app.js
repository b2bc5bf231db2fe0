// knex_app.js — battery app 5: the Knex query builder on node-postgres, column names chosen by
// BATTERY_SHAPE. Multi-row insert().returning(), onConflict('email').merge() upserts, joins with
// `u.*`, orderBy/limit/offset, sum()/count() with groupBy, increment(), JSONB @> filters,
// transactions with a nested one (a savepoint) rolled back, .with() (CTEs, one read with `big.*`), .stream() (a
// pg-query-stream cursor: a portal read in batches), del().returning(), and knex.raw joins of
// users and orgs with an unqualified column. Every read is checked against the model (harness.js).
'use strict';

const { Runner, Skip, expect, renamed } = require('./harness');

const r = new Runner();
const { env, shape, model } = r;
const NAME = shape.nameCol;
const AMOUNT = shape.amountCol;
const LIKE = `${env.tag}-%`;

const knex = require('knex')({
  client: 'pg',
  connection: {
    host: env.host, port: env.port, user: env.user, password: env.password, database: env.db,
    application_name: env.tag,
    options: shape.options(),
  },
  pool: { min: 1, max: 2 },
  compileSqlOnError: false,
});
// keep the failing statement apart from the message (knex prefixes the message with it)
knex.on('query-error', (err, q) => { err.batteryStatement = q.sql; });

class RollbackToSavepoint extends Error {}

function checkUser(what, u, m) {
  expect(`${what} ${NAME}`, u[NAME], m.name);
  expect(`${what} login_count`, u.login_count, shape.count(m.loginCount));
  expect(`${what} settings`, u.settings, m.settings);
  expect(`${what} org_id`, u.org_id, m.orgId);
  expect(`${what} email_domain`, u.email_domain, 'example.com');
}

function checkOrders(what, rows) {
  expect(`${what}: order ids`, rows.map((o) => o.id).sort(), [...model.orders.keys()].sort());
  for (const o of rows) {
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
  const rows = await knex('app.orgs').insert([0, 1].map((k) => ({ name: `${env.tag}-org-${k}` })))
    .returning(['id', 'name']);
  for (const o of rows) model.orgs.set(o.id, o.name);
}

async function insertUsers() {
  const fields = [0, 1, 2].map(() => model.newUserFields());
  const rows = await knex('app.users').insert(fields.map((f) => ({
    org_id: f.orgId, email: f.email, [NAME]: f.name, settings: JSON.stringify(f.settings),
  }))).returning(['id', 'email', 'email_domain', 'login_count']);
  for (const row of rows) model.addUser(row.id, fields.find((f) => f.email === row.email));
  for (const row of rows) {
    expect('email_domain returned by the insert', row.email_domain, 'example.com');
    expect('login_count default returned by the insert', row.login_count, shape.count(0));
  }
}

async function upsertUsers() {
  const existing = model.user();
  const fresh = model.newUserFields();
  const settings = model.settings();
  const rows = await knex('app.users').insert([
    { email: existing.email, org_id: existing.orgId, [NAME]: renamed(existing.name), settings: JSON.stringify(settings) },
    { email: fresh.email, org_id: fresh.orgId, [NAME]: fresh.name, settings: JSON.stringify(fresh.settings) },
  ]).onConflict('email').merge([NAME, 'settings']).returning(['id', 'email', NAME]);
  existing.name = renamed(existing.name);
  existing.settings = settings;
  model.addUser(rows.find((row) => row.email === fresh.email).id, fresh);
  for (const row of rows) expect(`upsert returned ${NAME}`, row[NAME], model.users.get(row.email).name);
}

async function getUser() {
  const m = model.user();
  const u = await knex('app.users as u').join('app.orgs as o', 'o.id', 'u.org_id')
    .select('u.*', 'o.name as org_name').where('u.email', m.email).first();
  checkUser('get_user', u, m);
  expect('get_user org name', u.org_name, model.orgs.get(m.orgId));
}

async function renameUser() {
  const m = model.user();
  const [row] = await knex('app.users').where({ id: m.id }).update({ [NAME]: renamed(m.name) }).returning([NAME]);
  m.name = renamed(m.name);
  expect(`${NAME} returned by the update`, row[NAME], m.name);
}

async function incrementLogin() {
  const m = model.user();
  await knex('app.users').where({ id: m.id }).increment('login_count', 1);
  m.loginCount += 1;
}

async function updateSettings() {
  const m = model.user();
  const settings = model.settings();
  await knex('app.users').where({ id: m.id }).update({ settings: JSON.stringify(settings) });
  m.settings = settings;
}

async function filterJson() {
  const rows = await knex('app.users').select('email').whereLike('email', LIKE)
    .whereJsonSupersetOf('settings', { lang: 'de' });
  expect('users with lang de', rows.map((row) => row.email).sort(),
    [...model.users.values()].filter((u) => u.settings.lang === 'de').map((u) => u.email).sort());
}

async function filterByName() {
  const m = model.user();
  const rows = await knex('app.users').select('email').where(NAME, m.name).whereLike('email', LIKE);
  expect(`users with that ${NAME}`, rows.map((row) => row.email), [m.email]);
}

async function insertOrders() {
  const picks = [0, 1, 2].map(() => [model.user(), model.cents()]);
  const rows = await knex('app.orders').insert(picks.map(([u, c]) => ({
    user_id: u.id, [AMOUNT]: shape.amount(c), status: 'new',
  }))).returning(['id', AMOUNT, 'status']);
  rows.forEach((row, i) => model.orders.set(row.id, { email: picks[i][0].email, cents: picks[i][1], status: 'new' }));
  rows.forEach((row, i) => shape.expectAmount('amount returned by the insert', row[AMOUNT], picks[i][1]));
}

async function addToAmount() {
  const id = model.orderId();
  const [row] = await knex('app.orders').where({ id }).increment(AMOUNT, shape.unit()).returning([AMOUNT]);
  model.orders.get(id).cents += 100;
  shape.expectAmount('amount returned by increment', row[AMOUNT], model.orders.get(id).cents);
}

async function setStatus() {
  const id = model.orderId();
  const status = model.pick(['paid', 'shipped', 'cancelled']);
  await knex('app.orders').where({ id }).update({ status });
  model.orders.get(id).status = status;
}

async function ordersWithUsers() {
  const rows = await knex('app.orders as o').join('app.users as u', 'u.id', 'o.user_id')
    .join('app.orgs as g', 'g.id', 'u.org_id')
    .select('o.id', `o.${AMOUNT}`, 'o.status', `u.${NAME}`, 'u.email', 'g.name as org_name')
    .whereLike('u.email', LIKE);
  checkOrders('orders_with_users', rows);
  for (const row of rows) {
    const m = model.users.get(row.email);
    expect(`order ${row.id} user email`, row.email, model.orders.get(row.id).email);
    expect(`order ${row.id} user ${NAME}`, row[NAME], m.name);
    expect(`order ${row.id} org name`, row.org_name, model.orgs.get(m.orgId));
  }
}

async function paginateUsers() {
  const order = model.byNameOrder();
  const offset = Math.floor(model.random() * Math.max(1, order.length));
  const rows = await knex('app.users').select('email').whereLike('email', LIKE)
    .orderBy([NAME, 'email']).limit(5).offset(offset);
  expect(`page at offset ${offset} ordered by ${NAME}`, rows.map((row) => row.email), order.slice(offset, offset + 5));
}

async function totalsByUser() {
  const rows = await knex('app.orders as o').join('app.users as u', 'u.id', 'o.user_id')
    .whereLike('u.email', LIKE).groupBy('u.email')
    .select('u.email').sum({ total: `o.${AMOUNT}` }).count({ n: 'o.id' });
  checkTotals('totals_by_user', rows);
}

async function cteTotals() {
  const rows = await knex
    .with('totals', (qb) => qb.from('app.orders').select('user_id').sum({ total: AMOUNT }).count({ n: '*' })
      .groupBy('user_id'))
    .from('app.users as u').join('totals as t', 't.user_id', 'u.id')
    .select('u.email', 't.total', 't.n').whereLike('u.email', LIKE);
  checkTotals('cte_totals', rows);
}

async function savepointTxn() {
  const u = model.user();
  const cents = model.cents();
  let id;
  let got;
  await knex.transaction(async (trx) => {
    [{ id }] = await trx('app.orders').insert({ user_id: u.id, [AMOUNT]: shape.amount(cents) }).returning(['id']);
    try {
      await trx.transaction(async (trx2) => {
        await trx2('app.orders').where({ id }).update({ [AMOUNT]: trx2.raw('?? * 3', [AMOUNT]) });
        throw new RollbackToSavepoint();
      });
    } catch (e) {
      if (!(e instanceof RollbackToSavepoint)) throw e;
    }
    got = (await trx('app.orders').where({ id }).first(AMOUNT))[AMOUNT];
    await trx('app.orders').where({ id }).update({ status: 'cancelled' });
  });
  model.orders.set(id, { email: u.email, cents, status: 'cancelled' });
  shape.expectAmount('amount after rollback to savepoint', got, cents);
}

async function streamOrders() {
  const stream = knex('app.orders as o').join('app.users as u', 'u.id', 'o.user_id').select('o.*')
    .whereLike('u.email', LIKE).orderBy('o.id').stream({ batchSize: 4 });
  const rows = [];
  for await (const row of stream) rows.push(row);
  checkOrders('stream_orders', rows);
}

async function rawJoinUnqualified() {
  const sql = shape.old
    ? 'select u.id, u.name, o.name as org_name from app.users u join app.orgs o on o.id = u.org_id where u.email like ?'
    // for a new-shape client `name` can only be orgs.name
    : 'select u.id, full_name, name as org_name from app.users u join app.orgs o on o.id = u.org_id where u.email like ?';
  const { rows } = await knex.raw(sql, [LIKE]);
  expect('raw join user ids', rows.map((row) => row.id).sort(), [...model.users.values()].map((m) => m.id).sort());
  for (const row of rows) {
    const m = model.userById(row.id);
    expect(`raw join ${NAME} of user ${row.id}`, row[NAME], m.name);
    expect(`raw join org name of user ${row.id}`, row.org_name, model.orgs.get(m.orgId));
  }
}

async function bigOrders() {
  const rows = await knex('app.orders as o').join('app.users as u', 'u.id', 'o.user_id')
    .select('o.id', `o.${AMOUNT}`).whereLike('u.email', LIKE).where(`o.${AMOUNT}`, '>', shape.amount(100000))
    .orderBy([{ column: `o.${AMOUNT}`, order: 'desc' }, 'o.id']);
  expect('big orders by amount', rows.map((row) => row.id), model.bigOrderIds());
  for (const row of rows) shape.expectAmount(`big order ${row.id} amount`, row[AMOUNT], model.orders.get(row.id).cents);
}

async function cteBigOrders() {
  const rows = await knex
    .with('big', (qb) => qb.from('app.orders').select('id', 'user_id', AMOUNT).where(AMOUNT, '>', shape.amount(100000)))
    .select('big.*').from('big').join('app.users as u', 'u.id', 'big.user_id').whereLike('u.email', LIKE)
    .orderBy([{ column: `big.${AMOUNT}`, order: 'desc' }, 'big.id']);
  expect('cte_big_orders: ids by amount', rows.map((row) => row.id), model.bigOrderIds());
  for (const row of rows) shape.expectAmount(`cte_big_orders: order ${row.id} amount`, row[AMOUNT], model.orders.get(row.id).cents);
}

async function deleteOrder() {
  const id = model.orderId();
  const rows = await knex('app.orders').where({ id }).del().returning(['id', AMOUNT]);
  const { cents } = model.orders.get(id);
  model.orders.delete(id);
  expect('orders deleted', rows.length, 1);
  shape.expectAmount('amount returned by the delete', rows[0][AMOUNT], cents);
}

async function pruneUsers() {
  const email = model.oldestBeyondLimit();
  if (email === null) throw new Skip();
  await knex('app.users').where({ id: model.users.get(email).id }).del();
  model.dropUser(email);
}

const OPS = [['insert_users', insertUsers], ['get_user', getUser], ['insert_orders', insertOrders],
  ['upsert_users', upsertUsers], ['rename_user', renameUser], ['increment_login', incrementLogin],
  ['update_settings', updateSettings], ['add_to_amount', addToAmount], ['set_status', setStatus],
  ['filter_json', filterJson], ['filter_by_name', filterByName], ['orders_with_users', ordersWithUsers],
  ['paginate_users', paginateUsers], ['totals_by_user', totalsByUser], ['cte_totals', cteTotals],
  ['savepoint_txn', savepointTxn], ['stream_orders', streamOrders], ['raw_join_unqualified', rawJoinUnqualified],
  ['big_orders', bigOrders], ['cte_big_orders', cteBigOrders], ['delete_order', deleteOrder], ['prune_users', pruneUsers]];

(async () => {
  await r.run('create_orgs', createOrgs);
  if (model.orgs.size > 0) await r.loop(OPS);
  await knex.destroy();
  r.finish();
})();
