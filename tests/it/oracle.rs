//! The differential oracle: statements generated from a small grammar over
//! the supported forms (SELECT with WHERE / GROUP BY / ORDER BY / `*`,
//! INSERT with and without column lists, multi-row VALUES, UPDATE reading
//! the old value, DELETE, RETURNING, upserts, INSERT … SELECT; CTEs,
//! recursive ones and data-modifying ones, set operations, window
//! functions, DISTINCT ON, LATERAL, casts with type modifiers; joins with a
//! second table whose column is named like the migrating column the client
//! does not see, so only the client's shape says whose an unqualified
//! reference is), with random values, run through
//! pgshift against the migrating table and, directly, against a table in a
//! second database that physically has the client's shape. Rows, column
//! names and errors must be identical, statement by statement; afterwards
//! the tables' contents must be identical and, while both physical columns
//! exist, equal to each other.
//!
//! Each phase × shape (old, new) × migration (a rename, the same rename
//! done in place, integer cents → numeric(12,2), a column added and a
//! column dropped — whose shapes only the session's `pgshift.shape` mark
//! tells apart — less the shapes that do not exist in a phase) runs
//! `PGSHIFT_ORACLE_CASES` statements (default 150: 5,700 in all);
//! `PGSHIFT_ORACLE_SEED` replays a run.

use std::sync::Arc;

use pgshift::rewrite::engine::MigrationRewriter;
use pgshift::rewrite::migration::{MigrationSpec, Phase};
use pgshift::rewrite::rules::{ActiveMigration, RulesCell};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::*;

/// xorshift64*: small, seedable, good enough for a grammar.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Rename,
    /// The same rename, done in place (`op: rename_column`).
    RenameInPlace,
    /// integer cents → numeric(12,2)
    Retype,
    /// `c int` added (no `up`): the client names `a` in both shapes; the
    /// shapes differ in `*`, RETURNING * and positional INSERTs.
    AddColumn,
    /// `legacy int`, between `a` and `note`, dropped: likewise.
    DropColumn,
    /// integer cents → numeric(12,2) under the same name `a` (the new
    /// column `a_pgshift_new` until contract): the session's mark says
    /// which type its `a` has.
    KeptName,
    /// The table renamed `…_r` (`a` unchanged): the old shape names the
    /// table by its old name, the new shape by its new one.
    RenameTable,
}

impl Kind {
    /// An added or a dropped column: the statement cannot tell the
    /// shapes apart, the session's mark does.
    fn marked(self) -> bool {
        matches!(self, Kind::AddColumn | Kind::DropColumn)
    }

    /// The session says its shape (the statement cannot).
    fn says_shape(self) -> bool {
        self.marked() || self == Kind::KeptName
    }

    /// cents → numeric(12,2): `b` is `up(a)`, not `a`.
    fn converts(self) -> bool {
        matches!(self, Kind::Retype | Kind::KeptName)
    }

    /// `b`'s value over `a`'s.
    fn up(self) -> &'static str {
        match self.converts() {
            false => "a",
            true => "(a::numeric / 100)::numeric(12,2)",
        }
    }

    /// The client names `a` in both shapes (what tells them apart is the
    /// session's mark, or the table's name).
    fn one_name(self) -> bool {
        self.says_shape() || self == Kind::RenameTable
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Old,
    New,
}

struct Run {
    kind: Kind,
    shape: Shape,
    phase: Phase,
    table: String,
}

impl Run {
    /// The column the client names.
    fn col(&self) -> &'static str {
        match self.shape {
            _ if self.kind.one_name() => "a",
            Shape::Old => "a",
            Shape::New => "b",
        }
    }

    /// Whether the client's shape exists in the phase: not the new shape
    /// of an added column before it is added, nor the old shape of a
    /// dropped one once it is gone (as direct).
    fn served(&self) -> bool {
        match (self.kind, self.shape) {
            (Kind::AddColumn, Shape::New) => self.phase != Phase::Planned,
            (Kind::DropColumn | Kind::KeptName, Shape::Old) => self.phase.has_old(),
            _ => true,
        }
    }

    /// The migrating column the client does not see.
    fn hidden(&self) -> &'static str {
        match self.shape {
            _ if self.kind.one_name() => "b",
            Shape::Old => "b",
            Shape::New => "a",
        }
    }

    fn col_type(&self) -> &'static str {
        match (self.kind, self.shape) {
            (Kind::Retype | Kind::KeptName, Shape::New) => "numeric(12,2)",
            _ => "int",
        }
    }

    /// A value in the client's shape (sometimes NULL).
    fn value(&self, rng: &mut Rng) -> String {
        if rng.below(12) == 0 {
            return "NULL".into();
        }
        let v = rng.range(-5, 20);
        match (self.kind, self.shape) {
            (Kind::Retype | Kind::KeptName, Shape::New) => {
                format!("{v}.{:02}", rng.below(4) * 25)
            }
            _ => v.to_string(),
        }
    }

    /// The name the client gives the migrating table.
    fn client_table(&self) -> String {
        match (self.kind, self.shape) {
            (Kind::RenameTable, Shape::New) => format!("{}_r", self.table),
            _ => self.table.clone(),
        }
    }

    fn spec(&self) -> MigrationSpec {
        match self.kind {
            Kind::RenameTable => {
                MigrationSpec::rename_table("oracle", &self.table, &format!("{}_r", self.table))
            }
            Kind::Rename => MigrationSpec::new("oracle", &self.table, "a", "b", None, None, None),
            Kind::RenameInPlace => {
                MigrationSpec::new("oracle", &self.table, "a", "b", None, None, None)
                    .and_then(MigrationSpec::renamed_in_place)
            }
            Kind::Retype => MigrationSpec::new(
                "oracle",
                &self.table,
                "a",
                "b",
                Some("numeric(12,2)"),
                Some("a::numeric / 100"),
                Some("(b * 100)::integer"),
            ),
            Kind::AddColumn => {
                let keys = pgshift::add_column::AddColumnKeys {
                    column: "c".into(),
                    type_name: "int".into(),
                    ..Default::default()
                };
                MigrationSpec::add_column("oracle", &self.table, &keys)
            }
            Kind::DropColumn => MigrationSpec::drop_column("oracle", &self.table, "legacy", None),
            Kind::KeptName => MigrationSpec::change_type_keeping_name(
                "oracle",
                &self.table,
                "a",
                "numeric(12,2)",
                "a::numeric / 100",
                "(a * 100)::integer",
                None,
            ),
        }
        .unwrap()
    }

    /// The migration as the rules see it.
    fn migration(&self) -> ActiveMigration {
        ActiveMigration {
            spec: self.spec(),
            phase: self.phase,
        }
    }

    /// The physical table of the phase, built the way the lifecycle does
    /// (add b, later drop a; or, in place, rename a to b), with seed rows.
    fn physical_ddl(&self) -> String {
        let t = &self.table;
        if self.kind.marked() {
            let m = self.migration();
            let with_new = self.kind == Kind::AddColumn && m.has_new();
            let with_old = self.kind == Kind::DropColumn && m.has_old();
            return self.marked_ddl(with_old, with_new);
        }
        if self.kind == Kind::RenameTable {
            let physical = match self.migration().reads_new() {
                true => format!("{t}_r"),
                false => t.clone(),
            };
            let mut ddl =
                format!("create table {physical} (id int primary key, a int, note text);");
            for id in 1..=8 {
                ddl += &format!(
                    "insert into {physical} (id, a, note) values ({id}, {}, 'seed');",
                    id * 3
                );
            }
            return ddl + &self.other_ddl();
        }
        let b_type = match self.kind.converts() {
            false => "int",
            true => "numeric(12,2)",
        };
        let b = self.spec().to;
        let mut ddl = format!("create table {t} (id int primary key, a int, note text);");
        if self.kind == Kind::RenameInPlace {
            for id in 1..=8 {
                ddl += &format!(
                    "insert into {t} (id, a, note) values ({id}, {}, 'seed');",
                    id * 3
                );
            }
            if self.migration().has_new() {
                ddl += &format!("alter table {t} rename column a to b;");
            }
            return ddl + &self.other_ddl();
        }
        if self.phase.has_new() {
            ddl += &format!("alter table {t} add column {b} {b_type};");
        }
        for id in 1..=8 {
            ddl += &format!(
                "insert into {t} (id, a, note) values ({id}, {}, 'seed');",
                id * 3
            );
        }
        if self.phase.has_new() {
            let up = self.kind.up();
            ddl += &format!("update {t} set {b} = {up};");
        }
        if !self.phase.has_old() {
            ddl += &format!("alter table {t} drop column a;");
            if self.kind == Kind::KeptName {
                ddl += &format!("alter table {t} rename column {b} to a;");
            }
        }
        ddl + &self.other_ddl()
    }

    /// A second table, the same in both databases, with a column named
    /// like the migrating column the client does *not* see (as `orgs.name`
    /// beside `users.full_name`): only the client's shape tells whether an
    /// unqualified reference to it is this table's.
    fn other_ddl(&self) -> String {
        let (t, h) = (&self.table, self.hidden());
        let mut ddl = format!("create table {t}_o (id int primary key, {h} int, label text);");
        for id in 1..=8 {
            ddl += &format!("insert into {t}_o values ({id}, {}, 'o{id}');", id * 5);
        }
        ddl
    }

    /// The table of an added (`c`) or dropped (`legacy`) column's kind,
    /// with `legacy` and `c` as asked, and the seed rows.
    fn marked_ddl(&self, legacy: bool, c: bool) -> String {
        let t = &self.table;
        let legacy_col = if legacy { "legacy int, " } else { "" };
        let mut ddl =
            format!("create table {t} (id int primary key, a int, {legacy_col}note text);");
        if c {
            ddl += &format!("alter table {t} add column c int;");
        }
        for id in 1..=8 {
            ddl += &format!(
                "insert into {t} (id, a, note) values ({id}, {}, 'seed');",
                id * 3
            );
        }
        ddl + &self.other_ddl()
    }

    /// The reference table: the client's shape, the same seed rows.
    fn reference_ddl(&self) -> String {
        let t = &self.client_table();
        match (self.kind, self.shape) {
            (Kind::AddColumn, Shape::Old) => return self.marked_ddl(false, false),
            (Kind::AddColumn, Shape::New) => return self.marked_ddl(false, true),
            (Kind::DropColumn, Shape::Old) => return self.marked_ddl(true, false),
            (Kind::DropColumn, Shape::New) => return self.marked_ddl(false, false),
            _ => {}
        }
        let c = self.col();
        let mut ddl = format!(
            "create table {t} (id int primary key, {c} {}, note text);",
            self.col_type()
        );
        for id in 1..=8 {
            let v = match (self.kind, self.shape) {
                (Kind::Retype | Kind::KeptName, Shape::New) => {
                    format!("{}::numeric / 100", id * 3)
                }
                _ => (id * 3).to_string(),
            };
            ddl += &format!("insert into {t} (id, {c}, note) values ({id}, {v}, 'seed');");
        }
        ddl + &self.other_ddl()
    }

    /// One statement of the grammar.
    fn statement(&self, rng: &mut Rng) -> String {
        let (t, x) = (&self.client_table(), self.col());
        let o = format!("{}_o", self.table);
        let id = rng.range(1, 24);
        let v = self.value(rng);
        let w = self.value(rng);
        let step = match (self.kind, self.shape) {
            (Kind::Retype | Kind::KeptName, Shape::New) => "0.25",
            _ => "1",
        };
        // Positional INSERTs are read in the old shape: for a type change
        // a new-shape client's value would be taken as the old type.
        let m = self.migration();
        let position_known = m.has_old()
            || matches!(self.kind, Kind::RenameInPlace | Kind::RenameTable)
            || self.kind.marked();
        // (A kept name's new column stands last once renamed.)
        let positional = position_known && (self.kind != Kind::Retype || self.shape == Shape::Old);
        let (h, ty) = (self.hidden(), self.col_type());
        let forms = if positional { 45 } else { 44 };
        match rng.below(forms) {
            0 => format!("select id, {x} from {t} where {x} > {v} order by id"),
            1 => format!(
                "select {x}, count(*) from {t} group by {x} having count(*) > 0 order by {x} nulls first"
            ),
            2 => format!("select {x} + {x} as twice, note from {t} where id = {id}"),
            3 => format!("select * from {t} where id = {id}"),
            4 => format!(
                "select q.{x} from {t} q where q.{x} between {v} and {w} order by q.id"
            ),
            5 => format!("select id from {t} order by {x} desc nulls last, id limit 3"),
            6 => format!("select sum({x}), min({x}), max({x}) from {t}"),
            7 => format!("insert into {t} (id, {x}, note) values ({id}, {v}, 'n{id}')"),
            8 => format!(
                "insert into {t} (id, {x}, note) values ({id}, {v}, 'm'), ({}, {w}, 'm')",
                rng.range(1, 24)
            ),
            9 => format!("insert into {t} (id, note) values ({id}, 'no value')"),
            10 => format!("update {t} set {x} = {x} + {step} where id = {id}"),
            11 => format!("update {t} set {x} = {v}, note = 'u' where {x} < {w}"),
            12 => format!("update {t} set note = 'z' where {x} = {v} returning id, {x}"),
            13 => format!("update {t} set {x} = NULL where id = {id}"),
            14 => format!("delete from {t} where {x} = {v} returning *"),
            15 => format!("delete from {t} where id = {id} returning {x}"),
            16 => format!("insert into {t} (id, {x}) values ({id}, {v}) returning *"),
            17 => format!("select count(*) from {t} where {x} is null"),
            18 => format!(
                "update {t} set {x} = {x} * 2 where {x} between {v} and {w} returning {x}"
            ),
            19 => format!(
                "select id from {t} where {x} > (select avg({x}) from {t}) order by id"
            ),
            20 => format!(
                "select s.{x} from (select {x} from {t} where id < {id}) s order by s.{x} nulls first"
            ),
            21 => format!("with c as (select id, {x} from {t}) select c.{x} from c where c.id = {id}"),
            22 => format!(
                "update {t} set {x} = {v} where id in (select id from {t} where {x} < {w})"
            ),
            23 => format!(
                "delete from {t} where {x} in (select q.{x} from {t} q where q.id = {id}) returning id"
            ),
            24 => format!(
                "insert into {t} (id, {x}, note) values ({id}, {v}, 'up') on conflict (id) do update set {x} = excluded.{x}, note = 'upserted'"
            ),
            25 => format!(
                "insert into {t} as r (id, {x}) values ({id}, {v}) on conflict (id) do update set {x} = r.{x} + excluded.{x} where r.{x} is not null returning id, {x}"
            ),
            26 => format!("insert into {t} (id, {x}) values ({id}, {v}) on conflict do nothing"),
            27 => format!(
                "insert into {t} (id, {x}, note) select id + 100, {x}, 'copy' from {t} where id = {id}"
            ),
            28 => format!(
                "insert into {t} (id, {x}) select {id} + 50, max({x}) from {t} where {x} < {w} on conflict (id) do update set {x} = excluded.{x}"
            ),
            // Joins with a table whose column only the shape tells apart.
            29 => format!(
                "select {t}.id, {x}, {h}, label from {t} join {o} o on o.id = {t}.id where {h} > {w} order by {t}.id"
            ),
            30 => format!(
                "select o.id from {o} o where exists (select 1 from {t} q where q.id = o.id and {x} is not null and {h} > 0) order by o.id"
            ),
            31 => format!(
                "select {h}, count(*) from {t} join {o} using (id) group by {h} order by {h}"
            ),
            // CTEs, recursive too; set operations; window functions.
            32 => format!(
                "with c as (select * from {t} where id < {id}) select {x}, id from c order by id"
            ),
            33 => format!(
                "with recursive r(n, v) as (select 1, {x} from {t} where id = {id} union all select n + 1, v + {step} from r where n < 3) select n, v from r order by n"
            ),
            34 => format!(
                "select {x} from {t} where id < 4 union all select {x} from {t} where id > 20 order by 1 nulls first"
            ),
            35 => format!(
                "select id, {x}, rank() over (order by {x} nulls first, id) from {t} order by id"
            ),
            36 => format!(
                "select distinct on ({x}) {x}, id from {t} order by {x} nulls first, id desc"
            ),
            // ORM-style casts with type modifiers.
            37 => format!("update {t} set {x} = {v}::{ty}, note = 'cast'::varchar(10) where id = {id}"),
            38 => format!(
                "insert into {t} (id, {x}, note) values ({id}, CAST({v} AS {ty}), 'c'::varchar(8)) on conflict (id) do nothing"
            ),
            39 => format!(
                "select id, {x}::text as shown from {t} where {x} = CAST({v} AS {ty}) order by id"
            ),
            // INSERT … SELECT with an alias; a data-modifying CTE.
            40 => format!(
                "insert into {t} (id, {x}) select id + 200, {x} * 2 as doubled from {t} where id = {id} on conflict do nothing"
            ),
            41 => format!(
                "with moved as (update {t} set {x} = {x} + {step} where id = {id} returning id, {x}) select id, {x} from moved"
            ),
            42 => format!(
                "select s.id, s.{x} from {t} s, lateral (select {h} from {o} where {o}.id = s.id) l where l.{h} > {w} order by s.id"
            ),
            43 => format!("select * from {t} q join {o} o on o.id = q.id where q.id = {id}"),
            // Positional: the client's shape has x second. (Not once a is
            // dropped: its place is unknown, and pgshift refuses.)
            _ => format!("insert into {t} values ({id}, {v}, 'positional')"),
        }
    }
}

/// Rows as (column, value) lists, or the error's SQLSTATE.
type Outcome = Result<Vec<Vec<(String, Option<String>)>>, String>;

async fn run_simple(client: &Client, sql: &str, hidden: &str) -> Outcome {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| {
                            (
                                r.columns()[i].name().to_string(),
                                r.get(i).map(str::to_string),
                            )
                        })
                        .filter(|(name, _)| name != hidden)
                        .collect(),
                ),
                _ => None,
            })
            .collect()),
        Err(e) => Err(sqlstate(&e).unwrap_or_else(|| e.to_string())),
    }
}

/// Rows in a comparable order: sorted unless the statement orders them;
/// columns by name under `*` (which adds the other column in its place).
fn normalize(sql: &str, outcome: Outcome) -> Outcome {
    outcome.map(|mut rows| {
        if sql.contains('*') && !sql.contains("count(*)") {
            for row in &mut rows {
                row.sort();
            }
        }
        if !sql.contains("order by") {
            rows.sort();
        }
        rows
    })
}

fn cases() -> usize {
    std::env::var("PGSHIFT_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

fn seed() -> u64 {
    std::env::var("PGSHIFT_ORACLE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0f9e_57ed)
}

#[tokio::test]
async fn generated_statements_match_a_table_in_the_clients_shape() {
    let direct = db().direct().await;
    let ref_db = unique("oracle_ref");
    direct
        .batch_execute(&format!("create database {ref_db}"))
        .await
        .unwrap();
    let mut ref_config = tokio_postgres::Config::new();
    let d = db();
    ref_config
        .host(&d.host)
        .port(d.port)
        .user(&d.user)
        .dbname(&ref_db);
    if let Some(p) = &d.password {
        ref_config.password(p);
    }
    let reference = connect(&ref_config).await.unwrap();
    let mut rng = Rng(seed() ^ 0x9E37_79B9_7F4A_7C15 | 1);
    let mut checked = 0usize;

    for kind in [
        Kind::Rename,
        Kind::RenameInPlace,
        Kind::Retype,
        Kind::AddColumn,
        Kind::DropColumn,
        Kind::KeptName,
        Kind::RenameTable,
    ] {
        for phase in [
            Phase::Planned,
            Phase::Expanded,
            Phase::Switched,
            Phase::Contracted,
        ] {
            for shape in [Shape::Old, Shape::New] {
                let run = Run {
                    kind,
                    shape,
                    phase,
                    table: unique("oracle"),
                };
                if !run.served() {
                    continue;
                }
                let context = format!("{kind:?} {phase} {shape:?} shape (seed {})", seed());
                direct.batch_execute(&run.physical_ddl()).await.unwrap();
                reference.batch_execute(&run.reference_ddl()).await.unwrap();
                let rules = Arc::new(RulesCell::with_catalog(&[run.migration()], catalog().await));
                let proxy =
                    TestProxy::with_rewriter(Arc::new(MigrationRewriter::new(rules)), |_| {}).await;
                // An added or dropped column's client says its shape.
                let mut config = proxy.config();
                if kind.says_shape() {
                    config.options(match shape {
                        Shape::Old => "-c pgshift.shape=old",
                        Shape::New => "-c pgshift.shape=new",
                    });
                }
                let app = connect(&config).await.unwrap();

                // Parameter and result types, extended protocol.
                let (t, x) = (&run.client_table(), run.col());
                for sql in [
                    format!("update {t} set {x} = $1 where id = $2"),
                    format!("update {t} set {x} = {x} + $1 where id = $2 returning {x}"),
                    format!("select {x}, id from {t} where {x} > $1 and id = $2"),
                    format!("insert into {t} (id, {x}) values ($1, $2) returning {x}"),
                    format!("delete from {t} where {x} = $1 returning *"),
                ] {
                    let ours = app
                        .prepare(&sql)
                        .await
                        .unwrap_or_else(|e| panic!("{context}: {sql}: {e:?}"));
                    let theirs = reference.prepare(&sql).await.unwrap();
                    assert_eq!(ours.params(), theirs.params(), "{context}: {sql}");
                    let shape_of = |s: &tokio_postgres::Statement| {
                        let mut cols: Vec<(String, tokio_postgres::types::Type)> = s
                            .columns()
                            .iter()
                            .filter(|c| c.name() != run.hidden())
                            .map(|c| (c.name().to_string(), c.type_().clone()))
                            .collect();
                        cols.sort_by(|a, b| a.0.cmp(&b.0));
                        cols
                    };
                    assert_eq!(shape_of(&ours), shape_of(&theirs), "{context}: {sql}");
                }

                let mut history: Vec<String> = Vec::new();
                for _ in 0..cases() {
                    let sql = run.statement(&mut rng);
                    let ours = normalize(&sql, run_simple(&app, &sql, run.hidden()).await);
                    let theirs = normalize(&sql, run_simple(&reference, &sql, run.hidden()).await);
                    let recent = &history[history.len().saturating_sub(12)..];
                    if std::env::var("PGSHIFT_ORACLE_CONTENTS").is_ok() {
                        // The whole table after every statement: finds the
                        // statement that made the two differ.
                        let all = format!("select id, {x}, note from {t} order by id");
                        let a = run_simple(&app, &all, "").await;
                        let b = run_simple(&reference, &all, "").await;
                        assert_eq!(a, b, "{context}: contents after {sql}");
                    }
                    assert_eq!(ours, theirs, "{context}: {sql}\n(after: {recent:#?})");
                    history.push(sql);
                    checked += 1;
                }

                // The whole table, read by the client; then the physical
                // columns agree with each other.
                let all = format!("select id, {x}, note from {t} order by id");
                assert_eq!(
                    run_simple(&app, &all, "").await,
                    run_simple(&reference, &all, "").await,
                    "{context}: final contents"
                );
                let one_column = kind.marked() || kind == Kind::RenameTable;
                if run.migration().has_old() && run.migration().has_new() && !one_column {
                    let up = kind.up();
                    let b = run.spec().to;
                    let differ: i64 = direct
                        .query_one(
                            &format!("select count(*) from {t} where {b} is distinct from {up}"),
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(differ, 0, "{context}: both physical columns agree");
                }
            }
        }
    }
    assert!(checked >= 53 * cases());
}
