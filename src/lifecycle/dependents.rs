//! What depends on the old column beyond the table's own indexes and
//! constraints (which expand and contract carry themselves): found in
//! `pg_depend` when a migration is registered and again before contract,
//! so nothing is discovered by a failing `DROP COLUMN` at the end.
//!
//! Carried onto the new column at contract, while both columns are still
//! written (their values agree, so a redefined object answers the same):
//! - a **view** — an old-shape client that lives in the database — is
//!   redefined (`CREATE OR REPLACE VIEW`, its options kept) from its own
//!   definition rewritten by pgshift's rewriter as a contracted phase reads
//!   it: `down(b) AS a`, so it keeps its shape (names and types);
//! - a **trigger** whose column list or `WHEN` names `a` (`CREATE OR
//!   REPLACE TRIGGER` with `b` in the list and `down(NEW.b)` in `WHEN`);
//! - a row-security **policy** (`ALTER POLICY` with `down(b)` in place of
//!   `a` in its expressions);
//! - an extended **statistics** object (created again on `b`; the old one
//!   goes with `a`), a **sequence owned by** `a` (owned by `b`: it would
//!   be dropped with `a`), and the **replica identity** index when it uses
//!   `a` (its copy on `b` becomes the replica identity).
//!
//! Each carried object's original definition is kept in the migration's
//! record, and a rollback puts it back. Refused up front, naming each
//! object and what to do: materialized views, rules, publications whose
//! column list names `a`, a partition key using `a`, and stored generated
//! columns computed from `a` (Postgres cannot re-point any of them without
//! rebuilding it under an exclusive lock), and anything the rewriter
//! cannot carry.

use tokio_postgres::Client;

use super::ddl::{self, LockDiscipline};
use super::handover::replace_column_with;
use super::store::Redefined;
use super::ActionError;
use crate::rewrite::catalog::Catalog;
use crate::rewrite::migration::{quote_ident, MigrationSpec};
use crate::rewrite::text::names;
use crate::rewrite::text::{splice, tokenize, Edit};
use sqlparser::tokenizer::Token;

/// One object that depends on `a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependent {
    pub kind: Kind,
    /// Its name as the events and errors show it.
    pub name: String,
    /// What pgshift does with it at contract: the SQL that carries it onto
    /// `b`, and the SQL that puts it back; `Err` says why it cannot.
    pub carry: Result<(String, String), String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    View,
    MaterializedView,
    Rule,
    Trigger,
    Policy,
    Statistics,
    Sequence,
    ReplicaIdentity,
    Publication,
    PartitionKey,
    GeneratedColumn,
    Other,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::MaterializedView => "materialized view",
            Kind::Rule => "rule",
            Kind::Trigger => "trigger",
            Kind::Policy => "policy",
            Kind::Statistics => "statistics object",
            Kind::Sequence => "sequence owned by the column",
            Kind::ReplicaIdentity => "replica identity index",
            Kind::Publication => "publication",
            Kind::PartitionKey => "partition key",
            Kind::GeneratedColumn => "generated column",
            Kind::Other => "object",
        }
    }
}

impl Dependent {
    /// `view app.v`, as events and errors name it.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind.label(), self.name)
    }
}

/// What `pg_depend` lists as depending on `a` (one row per object), with
/// what each is: (kind, name, definition or expression, extra).
const DEPENDENTS: &str = "
with col as (
    select attrelid, attnum from pg_attribute
     where attrelid = $1::text::regclass and attname = $2 and not attisdropped
), deps as (
    select distinct d.classid, d.objid, d.objsubid
      from pg_depend d, col
     where d.refclassid = 'pg_class'::regclass and d.refobjid = col.attrelid
       and d.refobjsubid = col.attnum
)
select case
         when c.relkind = 'v' then 'view'
         when c.relkind = 'm' then 'materialized view'
         else 'rule' end,
       case when r.rulename = '_RETURN' then c.oid::regclass::text
            else quote_ident(r.rulename) || ' on ' || c.oid::regclass::text end,
       case when c.relkind = 'v' and r.rulename = '_RETURN' then pg_get_viewdef(c.oid) end,
       case when c.relkind = 'v' then array_to_string(c.reloptions, ', ') end
  from deps join pg_rewrite r on deps.classid = 'pg_rewrite'::regclass and r.oid = deps.objid
  join pg_class c on c.oid = r.ev_class
 where c.oid <> $1::text::regclass or r.rulename <> '_RETURN'
union all
select 'trigger', quote_ident(t.tgname) || ' on ' || t.tgrelid::regclass::text,
       pg_get_triggerdef(t.oid), null
  from deps join pg_trigger t on deps.classid = 'pg_trigger'::regclass and t.oid = deps.objid
 where not t.tgisinternal
union all
select 'policy', quote_ident(p.polname) || ' on ' || p.polrelid::regclass::text,
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
  from deps join pg_policy p on deps.classid = 'pg_policy'::regclass and p.oid = deps.objid
union all
select 'statistics', quote_ident(n.nspname) || '.' || quote_ident(s.stxname),
       pg_get_statisticsobjdef(s.oid), null
  from deps join pg_statistic_ext s on deps.classid = 'pg_statistic_ext'::regclass and s.oid = deps.objid
  join pg_namespace n on n.oid = s.stxnamespace
union all
select 'publication', quote_ident(p.pubname), null, null
  from deps join pg_publication_rel pr on deps.classid = 'pg_publication_rel'::regclass and pr.oid = deps.objid
  join pg_publication p on p.oid = pr.prpubid
union all
select 'generated column', quote_ident(a.attname), pg_get_expr(ad.adbin, ad.adrelid), null
  from deps join pg_attrdef ad on deps.classid = 'pg_attrdef'::regclass and ad.oid = deps.objid
  join pg_attribute a on a.attrelid = ad.adrelid and a.attnum = ad.adnum and a.attgenerated = 's'
union all
select 'sequence', s.oid::regclass::text, null, null
  from deps join pg_class s on deps.classid = 'pg_class'::regclass and s.oid = deps.objid and s.relkind = 'S'
union all
select 'replica identity', ic.relname::text, null, null
  from col join pg_index i on i.indrelid = col.attrelid and i.indisreplident
                          and col.attnum = any(i.indkey::int2[])
  join pg_class ic on ic.oid = i.indexrelid
union all
select 'partition key', pt.partrelid::regclass::text, pg_get_partkeydef(pt.partrelid), null
  from col join pg_partitioned_table pt on pt.partrelid = col.attrelid
 where col.attnum = any(pt.partattrs::int2[])
    or exists (select 1 from deps where deps.classid = 'pg_class'::regclass
                and deps.objid = col.attrelid and deps.objsubid = 0)
order by 1, 2";

/// Every object depending on `spec`'s old column, each with how it is
/// carried (rewritten with `catalog`, the proxy's catalog snapshot).
pub async fn find(
    client: &Client,
    spec: &MigrationSpec,
    catalog: &Catalog,
) -> Result<Vec<Dependent>, tokio_postgres::Error> {
    let table = spec.table.to_string();
    let rows = client.query(DEPENDENTS, &[&table, &spec.from]).await?;
    let mut out = Vec::new();
    for row in rows {
        let kind: String = row.get(0);
        let name: String = row.get(1);
        let definition: Option<String> = row.get(2);
        let extra: Option<String> = row.get(3);
        out.push(describe(spec, catalog, &kind, name, definition, extra));
    }
    Ok(out)
}

fn describe(
    spec: &MigrationSpec,
    catalog: &Catalog,
    kind: &str,
    name: String,
    definition: Option<String>,
    extra: Option<String>,
) -> Dependent {
    if let Some((kind, why)) = uncarriable(spec, kind, &name, definition.as_deref()) {
        return Dependent {
            kind,
            name,
            carry: Err(why),
        };
    }
    let a = quote_ident(&spec.from);
    let table = spec.table.to_string();
    let unreadable = || "its definition could not be carried onto the new column".to_string();
    let (kind, carry) = match kind {
        "view" => (
            Kind::View,
            match definition {
                Some(def) => view(spec, catalog, &name, &def, extra.as_deref()),
                None => Err("its definition could not be read".into()),
            },
        ),
        "trigger" => (
            Kind::Trigger,
            definition
                .as_deref()
                .and_then(|def| trigger(spec, def))
                .ok_or_else(unreadable),
        ),
        "policy" => (
            Kind::Policy,
            policy(spec, &name, definition.as_deref(), extra.as_deref()),
        ),
        "statistics" => (
            Kind::Statistics,
            definition
                .as_deref()
                .and_then(|def| statistics(spec, &name, def))
                .ok_or_else(unreadable),
        ),
        "sequence" => (
            Kind::Sequence,
            Ok((
                format!(
                    "alter sequence {name} owned by {table}.{}",
                    quote_ident(&spec.to)
                ),
                format!("alter sequence {name} owned by {table}.{a}"),
            )),
        ),
        "replica identity" => (
            Kind::ReplicaIdentity,
            Ok((
                format!(
                    "alter table {table} replica identity using index {}",
                    quote_ident(&super::indexes::copy_name(&name, &spec.to))
                ),
                format!(
                    "alter table {table} replica identity using index {}",
                    quote_ident(&name)
                ),
            )),
        ),
        _ => (
            Kind::Other,
            Err("pgshift does not know how to carry it".into()),
        ),
    };
    Dependent { kind, name, carry }
}

/// The kinds of dependent pgshift cannot carry, with what the operator
/// does instead; `None` for the kinds it carries.
fn uncarriable(
    spec: &MigrationSpec,
    kind: &str,
    name: &str,
    definition: Option<&str>,
) -> Option<(Kind, String)> {
    let a = quote_ident(&spec.from);
    let table = spec.table.to_string();
    let definition = definition.unwrap_or_default();
    Some(match kind {
        "materialized view" => (
            Kind::MaterializedView,
            format!(
                "Postgres cannot redefine a materialized view in place: drop it before the contract and create it again over the new column after it (or exclude {a} from it)"
            ),
        ),
        "publication" => (
            Kind::Publication,
            format!(
                "its column list for {table} names {a}; a subscriber would need the new column too: remove {a} from the column list (ALTER PUBLICATION … SET TABLE {table} (…)) before the contract and add {} after it",
                quote_ident(&spec.to)
            ),
        ),
        "partition key" => (
            Kind::PartitionKey,
            format!(
                "{a} is in the partition key ({definition}); Postgres cannot change a table's partition key"
            ),
        ),
        "generated column" => (
            Kind::GeneratedColumn,
            format!(
                "it is computed from {a} ({definition}); Postgres cannot change a stored generated column's expression without rewriting the table under an exclusive lock: turn it into a plain column first (ALTER TABLE {table} ALTER COLUMN {name} DROP EXPRESSION) and keep it up to date from the application or a trigger, or drop it"
            ),
        ),
        "rule" => (
            Kind::Rule,
            "pgshift does not rewrite rules (CREATE RULE); drop the rule before the contract and create it again over the new column after it".into(),
        ),
        _ => return None,
    })
}

/// A view's redefinition: its definition as the rewriter serves an
/// old-shape query once `a` is gone (the view keeps its shape).
fn view(
    spec: &MigrationSpec,
    catalog: &Catalog,
    name: &str,
    definition: &str,
    options: Option<&str>,
) -> Result<(String, String), String> {
    let query = definition.trim().trim_end_matches(';');
    let rewritten = crate::rewrite::contracted_form(spec, catalog, query)?;
    let with = match options {
        Some(o) if !o.is_empty() => format!(" with ({o})"),
        _ => String::new(),
    };
    Ok((
        format!("create or replace view {name}{with} as {rewritten}"),
        format!("create or replace view {name}{with} as {query}"),
    ))
}

/// A trigger's redefinition: `b` in its column list, `down(OLD.b)` /
/// `down(NEW.b)` in its `WHEN`.
fn trigger(spec: &MigrationSpec, definition: &str) -> Option<(String, String)> {
    let body = definition.strip_prefix("CREATE TRIGGER")?;
    let tokens = tokenize(body).ok()?;
    // `old.a` / `new.a` (a row's field) first, then the bare column of
    // the `OF` list.
    let mut edits = Vec::new();
    for w in tokens.windows(3) {
        let row = match &w[0].token {
            Token::Word(word) if ["old", "new"].contains(&word.value.to_lowercase().as_str()) => {
                &body[w[0].start..w[0].end]
            }
            _ => continue,
        };
        if w[1].token == Token::Period && names(&w[2].token, &spec.from) {
            edits.push(Edit {
                start: w[0].start,
                end: w[2].end,
                text: spec.down_of(&format!("{row}.{}", quote_ident(&spec.to))),
            });
        }
    }
    let fields = splice(body, &mut edits)?;
    let carried = replace_column_with(&fields, &spec.from, &quote_ident(&spec.to))?;
    (carried != body).then(|| {
        (
            format!("CREATE OR REPLACE TRIGGER{carried}"),
            format!("CREATE OR REPLACE TRIGGER{body}"),
        )
    })
}

/// A policy's redefinition: `down(b)` in place of `a` in its expressions.
fn policy(
    spec: &MigrationSpec,
    name: &str,
    using: Option<&str>,
    check: Option<&str>,
) -> Result<(String, String), String> {
    let down = spec.down_of(&quote_ident(&spec.to));
    let clause = |expression: Option<&str>, keyword: &str, carry: bool| -> Result<String, String> {
        match expression {
            None => Ok(String::new()),
            Some(e) if !carry => Ok(format!(" {keyword} ({e})")),
            Some(e) => replace_column_with(e, &spec.from, &down)
                .map(|c| format!(" {keyword} ({c})"))
                .ok_or_else(|| format!("its expression {e} could not be read")),
        }
    };
    Ok((
        format!(
            "alter policy {name}{}{}",
            clause(using, "using", true)?,
            clause(check, "with check", true)?
        ),
        format!(
            "alter policy {name}{}{}",
            clause(using, "using", false)?,
            clause(check, "with check", false)?
        ),
    ))
}

/// A statistics object's copy on `b` (named `<name>_pgshift_<b>`; the
/// original goes with `a`).
fn statistics(spec: &MigrationSpec, name: &str, definition: &str) -> Option<(String, String)> {
    let (schema, bare) = name.rsplit_once('.')?;
    let copy = format!(
        "{schema}.{}",
        quote_ident(&super::indexes::copy_name(bare.trim_matches('"'), &spec.to))
    );
    let body = definition.strip_prefix("CREATE STATISTICS ")?;
    let (_, rest) = body.split_once(' ')?;
    let carried = replace_column_with(rest, &spec.from, &quote_ident(&spec.to))?;
    (carried != rest).then(|| {
        (
            format!("drop statistics if exists {copy}; create statistics {copy} {carried}"),
            format!("drop statistics if exists {copy}"),
        )
    })
}

/// Refuses (409, naming each object and what to do) while anything that
/// depends on `a` cannot be carried onto `b`.
pub fn refuse_uncarried(spec: &MigrationSpec, found: &[Dependent]) -> Result<(), ActionError> {
    let refusals: Vec<String> = found
        .iter()
        .filter_map(|d| {
            d.carry
                .as_ref()
                .err()
                .map(|why| format!("{}: {why}", d.label()))
        })
        .collect();
    if refusals.is_empty() {
        return Ok(());
    }
    Err(ActionError::Conflict(format!(
        "{} of {} cannot be moved onto {} by pgshift, because of what depends on it — {}",
        quote_ident(&spec.from),
        spec.table,
        quote_ident(&spec.to),
        refusals.join("; ")
    )))
}

/// Carries every dependent onto `b` (each under the lock discipline):
/// what was redefined, for a rollback to put back — also when one fails,
/// with the error.
pub async fn carry(
    client: &Client,
    found: &[Dependent],
    lock: LockDiscipline,
) -> Result<Vec<Redefined>, (Vec<Redefined>, ActionError)> {
    let mut done = Vec::new();
    for d in found {
        let Ok((sql, restore)) = &d.carry else {
            continue;
        };
        if let Err(e) = ddl::run_with_lock_timeout(client, sql, lock).await {
            let e = ActionError::Failed(format!("carrying {} onto the new column: {e}", d.label()));
            return Err((done, e));
        }
        tracing::info!(object = %d.label(), "carried onto the new column");
        done.push(Redefined {
            object: d.label(),
            restore: restore.clone(),
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cents() -> MigrationSpec {
        MigrationSpec::new(
            "m",
            "app.orders",
            "amount",
            "amount_dec",
            Some("numeric(12,2)"),
            Some("amount::numeric / 100"),
            Some("(amount_dec * 100)::integer"),
        )
        .unwrap()
    }

    #[test]
    fn a_trigger_s_column_list_and_when_follow_the_column() {
        let (carried, restore) = trigger(
            &cents(),
            "CREATE TRIGGER t BEFORE UPDATE OF amount, note ON app.orders FOR EACH ROW WHEN ((old.amount IS DISTINCT FROM new.amount)) EXECUTE FUNCTION app.f()",
        )
        .unwrap();
        assert_eq!(
            carried,
            "CREATE OR REPLACE TRIGGER t BEFORE UPDATE OF amount_dec, note ON app.orders FOR EACH ROW WHEN (((((old.amount_dec) * 100)::integer) IS DISTINCT FROM (((new.amount_dec) * 100)::integer))) EXECUTE FUNCTION app.f()"
        );
        assert!(restore.starts_with("CREATE OR REPLACE TRIGGER t BEFORE UPDATE OF amount, note"));
    }

    #[test]
    fn a_policy_reads_the_old_column_s_value_from_the_new_one() {
        let (carried, restore) =
            policy(&cents(), "p on app.orders", Some("(amount < 1000)"), None).unwrap();
        assert_eq!(
            carried,
            "alter policy p on app.orders using (((((amount_dec) * 100)::integer) < 1000))"
        );
        assert_eq!(
            restore,
            "alter policy p on app.orders using ((amount < 1000))"
        );
    }

    #[test]
    fn statistics_are_created_again_on_the_new_column() {
        let (carried, restore) = statistics(
            &cents(),
            "app.s1",
            "CREATE STATISTICS app.s1 ON amount, note FROM app.orders",
        )
        .unwrap();
        assert_eq!(
            carried,
            "drop statistics if exists app.s1_pgshift_amount_dec; create statistics app.s1_pgshift_amount_dec ON amount_dec, note FROM app.orders"
        );
        assert_eq!(
            restore,
            "drop statistics if exists app.s1_pgshift_amount_dec"
        );
    }
}
