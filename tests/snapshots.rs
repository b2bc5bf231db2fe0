//! The rewritten SQL of every statement form, in every phase of a rename
//! and of a type change, as `insta` snapshots under `tests/snapshots/`: a
//! change in what pgshift sends upstream shows in review as a diff of
//! these files. Run `INSTA_UPDATE=always cargo test --test snapshots` (or
//! `cargo insta review`) to accept a deliberate change.
//!
//! Each snapshot lists, per statement: the statement as the client sent
//! it, then what goes upstream (`=` unchanged, `→` the rewrite, `✗` the
//! refusal with its SQLSTATE). The catalog is the phase's physical table:
//! the old column until contract, the new one from expand; for a rename in
//! place, the one column under its old name until the switch, under its
//! new one after.

use std::sync::Arc;

use pgshift::rewrite::catalog::{Catalog, ColumnDef, TableDef};
use pgshift::rewrite::engine::MigrationRewriter;
use pgshift::rewrite::migration::{MigrationSpec, Phase};
use pgshift::rewrite::rules::{ActiveMigration, RulesCell};
use pgshift::rewrite::{Rewrite, StatementKind, StatementRewriter};

/// Every statement form, old shape (`abalance`) and new shape (`balance`).
const STATEMENTS: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "SELECT balance FROM pgbench_accounts WHERE aid = $1",
    "SELECT * FROM pgbench_accounts WHERE aid = $1",
    "SELECT a.aid, a.abalance, b.bbalance FROM pgbench_accounts a JOIN pgbench_branches b USING (bid) WHERE a.abalance > 0",
    "SELECT sum(balance) FROM pgbench_accounts GROUP BY bid HAVING sum(balance) > 10 ORDER BY 1",
    "SELECT aid FROM pgbench_accounts WHERE abalance IN (SELECT bbalance FROM pgbench_branches)",
    "WITH rich AS (SELECT aid, balance FROM pgbench_accounts WHERE balance > 100) SELECT * FROM rich",
    "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES ($1, $2, $3, '')",
    "INSERT INTO pgbench_accounts (aid, bid, balance) VALUES (1, 1, 5) RETURNING balance",
    "INSERT INTO pgbench_accounts VALUES (1, 1, 0, '')",
    "INSERT INTO pgbench_accounts (aid, abalance) VALUES (1, 5) ON CONFLICT (aid) DO UPDATE SET abalance = excluded.abalance",
    "INSERT INTO pgbench_accounts (aid, balance) SELECT aid + 1000, balance FROM pgbench_accounts",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "UPDATE pgbench_accounts SET balance = balance + 1 WHERE aid = 1 RETURNING balance, aid",
    "UPDATE pgbench_accounts a SET abalance = b.bbalance FROM pgbench_branches b WHERE a.bid = b.bid",
    "DELETE FROM pgbench_accounts WHERE abalance < 0 RETURNING *",
    "SELECT aid FROM pgbench_branches",
];

fn column(name: &str, type_name: &str) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        type_name: type_name.into(),
        not_null: false,
        default: None,
    }
}

/// pgbench_accounts as it physically is in `m`'s phase, with `new_type`
/// for the new column (where a rename in place leaves it, or last where
/// `ADD COLUMN` puts it); pgbench_branches.
fn catalog(m: &ActiveMigration, new_type: &str) -> Catalog {
    let mut accounts = vec![column("aid", "integer"), column("bid", "integer")];
    if m.has_old() {
        accounts.push(column("abalance", "integer"));
    }
    if m.has_new() && m.spec.in_place {
        accounts.push(column("balance", new_type));
    }
    accounts.push(column("filler", "character(84)"));
    if m.has_new() && !m.spec.in_place {
        accounts.push(column("balance", new_type));
    }
    let mut c = Catalog::empty();
    c.insert("public", "pgbench_accounts", TableDef { columns: accounts });
    let branches = vec![column("bid", "integer"), column("bbalance", "integer")];
    c.insert("public", "pgbench_branches", TableDef { columns: branches });
    c
}

/// What goes upstream for each statement of [`STATEMENTS`].
fn rewritten(spec: &MigrationSpec, phase: Phase, new_type: &str) -> String {
    let migration = ActiveMigration {
        spec: spec.clone(),
        phase,
    };
    let catalog = catalog(&migration, new_type);
    let cell = RulesCell::with_catalog(&[migration], catalog);
    let r = MigrationRewriter::new(Arc::new(cell));
    let mut out = String::new();
    for sql in STATEMENTS {
        let upstream = match r.rewrite(StatementKind::Parse, sql.as_bytes()) {
            Rewrite::Unchanged => "=".to_string(),
            Rewrite::Replaced(text) => format!("→ {text}"),
            Rewrite::Refused(refusal) => format!("✗ {} {}", refusal.code, refusal.message),
            Rewrite::Done(tag) => format!("✓ {tag}"),
        };
        out.push_str(&format!("{sql}\n  {upstream}\n\n"));
    }
    out
}

/// `abalance → balance` on pgbench_accounts.
fn rename() -> Result<MigrationSpec, pgshift::rewrite::migration::SpecError> {
    MigrationSpec::new(
        "rename",
        "pgbench_accounts",
        "abalance",
        "balance",
        None,
        None,
        None,
    )
}

#[test]
fn a_rename_in_every_phase() {
    let spec = rename().unwrap();
    for phase in Phase::ALL {
        insta::assert_snapshot!(
            format!("rename_{}", phase.as_str()),
            rewritten(&spec, phase, "integer")
        );
    }
}

#[test]
fn a_rename_in_place_in_each_of_its_phases() {
    let spec = rename().and_then(MigrationSpec::renamed_in_place).unwrap();
    for phase in [
        Phase::Planned,
        Phase::Expanded,
        Phase::Switched,
        Phase::Contracted,
    ] {
        insta::assert_snapshot!(
            format!("rename_in_place_{}", phase.as_str()),
            rewritten(&spec, phase, "integer")
        );
    }
}

#[test]
fn a_type_change_in_every_phase() {
    let spec = MigrationSpec::new(
        "to_numeric",
        "pgbench_accounts",
        "abalance",
        "balance",
        Some("numeric(12,2)"),
        Some("abalance::numeric / 100"),
        Some("(balance * 100)::integer"),
    )
    .unwrap();
    for phase in Phase::ALL {
        insta::assert_snapshot!(
            format!("type_change_{}", phase.as_str()),
            rewritten(&spec, phase, "numeric(12,2)")
        );
    }
}

/// `pgshift plan` of the sample migrations under `tests/plan/` (every
/// rule, a transaction, comments, a dollar-quoted body, a `down` given in
/// a comment, files in version order, a `.down.sql` left out).
#[test]
fn the_plan_of_sample_migration_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan");
    let mut steps = Vec::new();
    for file in pgshift::sql_plan::files(&dir).unwrap() {
        let sql = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        steps.extend(pgshift::sql_plan::plan_text(&name, &sql));
    }
    insta::assert_snapshot!("plan_of_sample_files", pgshift::sql_plan::render(&steps));
}
