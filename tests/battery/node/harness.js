// harness.js — what the battery's two Node apps share: the BATTERY_* environment, the shape
// (column names and amount conversions), the in-memory model of the app's own rows and its
// export, read checks, SQLSTATE extraction, the JSON Lines operation log and the loop that runs
// operations until the stop file exists. Amounts are kept in integer cents in the model; a
// new-shape app writes and expects numeric(12,2) values, which node-postgres returns as strings
// with exactly two decimals (and bigint — ids of orders and orgs, sums, counts — as strings).
'use strict';

const fs = require('fs');

const MAX_USERS = 24; // an app prunes its oldest user beyond this many

class WrongRead extends Error {}
class Skip extends Error {}

function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

function expect(what, got, want) {
  if (canonical(got) !== canonical(want)) {
    throw new WrongRead(`${what}: got ${canonical(got)}, expected ${canonical(want)}`);
  }
}

function decimal(cents) {
  return `${Math.floor(cents / 100)}.${String(cents % 100).padStart(2, '0')}`;
}

class Shape {
  constructor(shape) {
    if (shape !== 'old' && shape !== 'new') throw new Error(`BATTERY_SHAPE must be old or new, not ${shape}`);
    this.old = shape === 'old';
    this.nameCol = this.old ? 'name' : 'full_name';
    this.amountCol = this.old ? 'amount' : 'amount_decimal';
  }

  // the value this shape writes for an amount of `cents`
  amount(cents) { return this.old ? cents : decimal(cents); }

  // one currency unit (100 cents) in this shape's column
  unit() { return this.old ? 100 : 1; }

  // an amount read from the column: an integer, or a string with exactly two decimals
  expectAmount(what, got, cents) { expect(what, got, this.amount(cents)); }

  // a sum of amounts: bigint (a string in node-postgres) or numeric
  expectTotal(what, got, cents) { expect(what, got, this.old ? String(cents) : decimal(cents)); }

  exportAmount(cents) { return this.old ? cents : decimal(cents); }

  // users.login_count: integer in the old shape, bigint (a string in node-postgres) in the new
  count(n) { return this.old ? n : String(n); }

  // the startup options: the old version pins itself to the old shape of login_count (the new
  // one is marked by its application_name, the migration's new_shape)
  options() { return this.old ? '-c pgshift.shape=old' : undefined; }
}

// a small seeded generator, so that a run can be replayed from its tag
function rng(seedText) {
  let h = 1779033703;
  for (const c of seedText) h = Math.imul(h ^ c.charCodeAt(0), 3432918353);
  return () => {
    h = Math.imul(h ^ (h >>> 15), 2246822507);
    h = Math.imul(h ^ (h >>> 13), 3266489909);
    return ((h ^= h >>> 16) >>> 0) / 4294967296;
  };
}

function personName(n, rev) {
  return `Person ${String(n).padStart(5, '0')} O'Brien r${rev}`;
}

function renamed(name) {
  const i = name.lastIndexOf(' r');
  return `${name.slice(0, i)} r${Number(name.slice(i + 2)) + 1}`;
}

class Model {
  constructor(env) {
    this.env = env;
    this.orgs = new Map(); // id (string) -> name
    this.users = new Map(); // email -> {id, email, n, name, loginCount, settings, orgId}
    this.orders = new Map(); // id (string) -> {email, cents, status}
    this.nextN = 0;
    this.random = rng(env.tag);
  }

  pick(list) { return list[Math.floor(this.random() * list.length)]; }

  settings() { return { theme: this.pick(['dark', 'light']), lang: this.pick(['en', 'fr', 'de']) }; }

  newUserFields() {
    const n = ++this.nextN;
    return {
      n,
      email: `${this.env.tag}-u${String(n).padStart(5, '0')}@example.com`,
      name: personName(n, 1),
      orgId: this.pick([...this.orgs.keys()].sort()),
      settings: this.settings(),
    };
  }

  addUser(id, f) {
    this.users.set(f.email, { id, email: f.email, n: f.n, name: f.name, loginCount: 0, settings: f.settings,
      orgId: f.orgId });
  }

  user() {
    if (this.users.size === 0) throw new Skip();
    return this.users.get(this.pick([...this.users.keys()].sort()));
  }

  userById(id) { return [...this.users.values()].find((u) => u.id === id); }

  orderId() {
    if (this.orders.size === 0) throw new Skip();
    return this.pick([...this.orders.keys()].sort());
  }

  // a random amount; one in four above the partial index's 1000.00
  cents() {
    return this.random() < 0.25 ? 100001 + Math.floor(this.random() * 199999) : Math.floor(this.random() * 100000);
  }

  dropUser(email) {
    const { id } = this.users.get(email);
    this.users.delete(email);
    for (const [oid, o] of this.orders) if (o.email === email) this.orders.delete(oid);
    return id;
  }

  oldestBeyondLimit() {
    if (this.users.size <= MAX_USERS) return null;
    return [...this.users.values()].sort((a, b) => a.n - b.n)[0].email;
  }

  // emails in (name, email) order: names share a prefix and differ in a zero-padded number
  byNameOrder() {
    return [...this.users.values()]
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.email < b.email ? -1 : 1))
      .map((u) => u.email);
  }

  // email -> [cents, count] over the orders the app holds
  totals() {
    const out = new Map();
    for (const o of this.orders.values()) {
      const [c, n] = out.get(o.email) || [0, 0];
      out.set(o.email, [c + o.cents, n + 1]);
    }
    return out;
  }

  // order ids above 1000.00, by amount descending then id (as Postgres orders bigint ids)
  bigOrderIds() {
    return [...this.orders.entries()].filter(([, o]) => o.cents > 100000)
      .sort(([a, x], [b, y]) => y.cents - x.cents || Number(a) - Number(b)).map(([id]) => id);
  }

  export() {
    const s = this.env.shape;
    const users = {};
    for (const [e, u] of this.users) {
      users[e] = { [s.nameCol]: u.name, login_count: u.loginCount, settings: u.settings };
    }
    const orders = {};
    for (const [id, o] of this.orders) orders[id] = { [s.amountCol]: s.exportAmount(o.cents), status: o.status };
    return { users, orders };
  }
}

// {sqlstate, message, statement} of the server error behind `err` (through ORM wrappers), or
// sqlstate null. The statement is known when the ORM keeps it: Sequelize's `sql`, and knex's,
// which the knex app stores as `batteryStatement` (knex prefixes the message with it).
function dbError(err) {
  const statement = (err && (err.sql || err.batteryStatement)) || null;
  const pending = [err];
  const seen = new Set();
  while (pending.length) {
    const e = pending.shift();
    if (!e || typeof e !== 'object' || seen.has(e)) continue;
    seen.add(e);
    if (typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) {
      let message = String(e.message);
      if (e.batteryStatement && message.startsWith(`${e.batteryStatement} - `)) {
        message = message.slice(e.batteryStatement.length + 3);
      }
      return { sqlstate: e.code, message: message.split('\n')[0], statement };
    }
    pending.push(e.parent, e.original, e.cause, e.nativeError);
  }
  return { sqlstate: null, message: `${err && err.name}: ${err && err.message}`.slice(0, 500), statement };
}

class Runner {
  constructor() {
    const e = process.env;
    this.env = {
      host: e.BATTERY_HOST,
      port: Number(e.BATTERY_PORT),
      user: e.BATTERY_USER,
      db: e.BATTERY_DB,
      password: e.BATTERY_PASSWORD || undefined,
      shape: new Shape(e.BATTERY_SHAPE),
      tag: e.BATTERY_TAG,
      stopFile: e.BATTERY_STOP_FILE,
      modelPath: e.BATTERY_MODEL,
      pauseMs: Number(e.BATTERY_PAUSE_MS || 20),
    };
    this.shape = this.env.shape;
    this.model = new Model(this.env);
    this.log = fs.openSync(e.BATTERY_LOG, 'a');
  }

  record(op, tMs, error, wrong) {
    const line = { t_ms: tMs, op, ok: !error && !wrong, error: error || null, wrong: wrong || null };
    fs.writeSync(this.log, `${JSON.stringify(line)}\n`);
  }

  async run(op, fn) {
    const tMs = Date.now();
    try {
      await fn();
    } catch (e) {
      if (e instanceof Skip) return;
      if (e instanceof WrongRead) this.record(op, tMs, null, e.message);
      else this.record(op, tMs, dbError(e), null);
      return;
    }
    this.record(op, tMs, null, null);
  }

  // round-robin over [name, fn] until the stop file exists
  async loop(ops) {
    for (let i = 0; !fs.existsSync(this.env.stopFile); i++) {
      const [name, fn] = ops[i % ops.length];
      await this.run(name, fn);
      await new Promise((res) => setTimeout(res, this.env.pauseMs));
    }
  }

  finish() {
    fs.writeFileSync(this.env.modelPath, JSON.stringify(this.model.export(), null, 1));
    fs.closeSync(this.log);
  }
}

module.exports = { Runner, WrongRead, Skip, expect, renamed };
