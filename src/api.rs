//! The admin API's requests, typed, in one place for the server, the
//! lifecycle and the command line: what each endpoint accepts, with every
//! key named (an unknown or misspelt key is a 400 naming it, never
//! ignored). The server parses a request into an [`Action`] (or a
//! [`NewMigration`]) before the lifecycle sees it; the command line builds
//! the same structs and sends their JSON. The answers of `/status` and of
//! `/migrations/{id}` are typed here too ([`ProxyStatus`],
//! [`MigrationStatus`]): the server serializes them and the command line
//! reads them back, refusing a key it does not know.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rewrite::migration::Phase;

pub use crate::ops::Op;

/// `POST /migrations`: the keys of a `[[migrations]]` entry. Which keys an
/// operation takes is in the operator's guide; a key it does not take is
/// refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMigration {
    pub id: String,
    /// What it does; today's copying migration when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    pub table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub new_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    /// `create_index`: the statement; `add_constraint`: the constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// The index or constraint's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `set_default`: the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// `set_default`: the new default expression; `add_column`: the
    /// column's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// `add_column`: the column is NOT NULL once the migration is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_null: Option<bool>,
    /// `add_column`, `drop_column`, `change_type` keeping the name: the
    /// sessions served in the new shape whatever the read switch says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_shape: Option<crate::rewrite::marker::ShapeMarker>,
}

impl NewMigration {
    /// The migration's spec, checked: the keys its operation takes, and no
    /// other.
    pub fn spec(
        &self,
    ) -> Result<crate::rewrite::migration::MigrationSpec, crate::rewrite::migration::SpecError>
    {
        use crate::rewrite::migration::{MigrationSpec, SpecError};
        let op = self.op.unwrap_or_default();
        let err = |reason: String| SpecError {
            id: self.id.clone(),
            reason,
        };
        let given = |keys: &[(&str, bool)]| -> Vec<String> {
            keys.iter()
                .filter(|(_, g)| *g)
                .map(|(k, _)| k.to_string())
                .collect()
        };
        let catalog_keys = [
            ("definition", self.definition.is_some()),
            ("name", self.name.is_some()),
            ("column", self.column.is_some()),
            ("default", self.default.is_some()),
        ];
        if op == Op::AddColumn {
            return self.add_column_spec();
        }
        if op == Op::DropColumn {
            return self.drop_column_spec();
        }
        if op == Op::RenameTable {
            self.takes_only("rename_table", &["to"]).map_err(err)?;
            let Some(to) = &self.to else {
                return Err(err("rename_table needs \"to\" (the new name)".into()));
            };
            return MigrationSpec::rename_table(&self.id, &self.table, to);
        }
        if op == Op::ChangeType && self.to.is_none() {
            return self.change_type_keeping_name_spec();
        }
        let filled = op == Op::SetNotNull;
        if self.not_null.is_some() || (self.new_shape.is_some() && !filled) {
            let key = match self.not_null {
                Some(_) => "not_null",
                None => "new_shape",
            };
            return Err(err(format!("{} takes no {key}", op.as_str())));
        }
        if op.is_catalog() {
            let column_keys = [
                ("from", self.from.is_some()),
                ("to", self.to.is_some()),
                ("type", self.new_type.is_some()),
                ("up", self.up.is_some() && !filled),
                ("down", self.down.is_some()),
            ];
            let wrong = given(&column_keys);
            if !wrong.is_empty() {
                return Err(err(format!(
                    "{} takes no {}",
                    op.as_str(),
                    wrong.join(", ")
                )));
            }
            let keys = crate::ops::CatalogKeys {
                definition: self.definition.clone(),
                name: self.name.clone(),
                column: self.column.clone(),
                default: self.default.clone(),
                up: self.up.clone(),
                new_shape: self.new_shape.clone(),
            };
            return MigrationSpec::catalog(&self.id, &self.table, op, keys);
        }
        let wrong = given(&catalog_keys);
        if !wrong.is_empty() {
            return Err(err(format!(
                "{} takes no {}",
                op.as_str(),
                wrong.join(", ")
            )));
        }
        let (Some(from), Some(to)) = (&self.from, &self.to) else {
            return Err(err(format!("{} needs \"from\" and \"to\"", op.as_str())));
        };
        let spec = MigrationSpec::new(
            &self.id,
            &self.table,
            from,
            to,
            self.new_type.as_deref(),
            self.up.as_deref(),
            self.down.as_deref(),
        )?;
        match op {
            Op::RenameColumn => spec.renamed_in_place(),
            Op::ChangeType if spec.new_type.is_none() => Err(err(
                "change_type needs the new type (\"type\"), with up and down".into(),
            )),
            _ => Ok(spec),
        }
    }
}

impl NewMigration {
    /// `Err` naming the keys given that `op` does not take (it takes
    /// `id`, `op`, `table` and `allowed`).
    fn takes_only(&self, op: &str, allowed: &[&str]) -> Result<(), String> {
        let given = [
            ("from", self.from.is_some()),
            ("to", self.to.is_some()),
            ("type", self.new_type.is_some()),
            ("up", self.up.is_some()),
            ("down", self.down.is_some()),
            ("definition", self.definition.is_some()),
            ("name", self.name.is_some()),
            ("column", self.column.is_some()),
            ("default", self.default.is_some()),
            ("not_null", self.not_null.is_some()),
            ("new_shape", self.new_shape.is_some()),
        ];
        let wrong: Vec<&str> = given
            .iter()
            .filter(|(k, g)| *g && !allowed.contains(k))
            .map(|(k, _)| *k)
            .collect();
        match wrong.is_empty() {
            true => Ok(()),
            false => Err(format!("{op} takes no {}", wrong.join(", "))),
        }
    }

    /// A `drop_column`'s spec: `column`, and no other key.
    fn drop_column_spec(
        &self,
    ) -> Result<crate::rewrite::migration::MigrationSpec, crate::rewrite::migration::SpecError>
    {
        use crate::rewrite::migration::{MigrationSpec, SpecError};
        let err = |reason: String| SpecError {
            id: self.id.clone(),
            reason,
        };
        self.takes_only("drop_column", &["column", "new_shape"])
            .map_err(err)?;
        let Some(column) = &self.column else {
            return Err(err("drop_column needs \"column\"".into()));
        };
        MigrationSpec::drop_column(&self.id, &self.table, column, self.new_shape.clone())
    }

    /// A `change_type` without `to`: the column keeps its name; `from`,
    /// `type`, `up`, `down` and optional `new_shape`.
    fn change_type_keeping_name_spec(
        &self,
    ) -> Result<crate::rewrite::migration::MigrationSpec, crate::rewrite::migration::SpecError>
    {
        use crate::rewrite::migration::{MigrationSpec, SpecError};
        let err = |reason: String| SpecError {
            id: self.id.clone(),
            reason,
        };
        let keys = ["from", "type", "up", "down", "new_shape"];
        self.takes_only("change_type", &keys).map_err(err)?;
        let (Some(from), Some(ty), Some(up), Some(down)) =
            (&self.from, &self.new_type, &self.up, &self.down)
        else {
            return Err(err(
                "change_type needs \"from\", the new \"type\", \"up\" and \"down\" (and \"to\" only to give the new column another name)".into(),
            ));
        };
        MigrationSpec::change_type_keeping_name(
            &self.id,
            &self.table,
            from,
            ty,
            up,
            down,
            self.new_shape.clone(),
        )
    }

    /// An `add_column`'s spec: `column`, `type`, optional `default`,
    /// `not_null` and `up`, and no other key.
    fn add_column_spec(
        &self,
    ) -> Result<crate::rewrite::migration::MigrationSpec, crate::rewrite::migration::SpecError>
    {
        use crate::rewrite::migration::{MigrationSpec, SpecError};
        let err = |reason: String| SpecError {
            id: self.id.clone(),
            reason,
        };
        let keys = ["column", "type", "default", "not_null", "up", "new_shape"];
        self.takes_only("add_column", &keys).map_err(err)?;
        let (Some(column), Some(type_name)) = (&self.column, &self.new_type) else {
            return Err(err("add_column needs \"column\" and \"type\"".into()));
        };
        let keys = crate::add_column::AddColumnKeys {
            column: column.clone(),
            type_name: type_name.clone(),
            default: self.default.clone(),
            not_null: self.not_null.unwrap_or(false),
            up: self.up.clone(),
            new_shape: self.new_shape.clone(),
        };
        MigrationSpec::add_column(&self.id, &self.table, &keys)
    }
}

/// `POST /migrations/{id}/backfill` (and its settings while it runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_pause_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_target_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replication_lag_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lock_waits: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<i64>,
}

impl Backfill {
    /// Whether any setting is given.
    pub fn changes_anything(&self) -> bool {
        *self != Backfill::default()
    }
}

/// `POST /migrations/{id}/validate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    /// Repair the mismatching rows (`b := up(a)`), range by range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<bool>,
    /// Keys per range of a walk (1 to 1,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_rows: Option<u64>,
    /// Pause between ranges (default: the backfill's pause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
    /// Time budget of the one-statement check (0: always walk; at most
    /// 60,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_pass_ms: Option<u64>,
}

/// Which column answers reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadSource {
    New,
    Old,
}

/// `POST /migrations/{id}/switch-reads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchReads {
    pub to: ReadSource,
}

/// `POST /migrations/{id}/contract`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// Contract although old-shape statements were seen in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// How far back old-shape statements hold the contract (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    /// Drop exclusion constraints on the old column that have no
    /// equivalent on the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_exclusion_constraints: Option<bool>,
}

/// The actions that take no options: an empty body or `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// `POST /migrations/{id}/{action}`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Expand,
    Backfill(Backfill),
    Pause,
    Resume,
    Validate(Validate),
    SwitchReads(SwitchReads),
    Contract(Contract),
    Complete,
    Rollback,
}

/// The actions' names, in lifecycle order.
pub const ACTIONS: &[&str] = &[
    "expand",
    "backfill",
    "pause",
    "resume",
    "validate",
    "switch-reads",
    "contract",
    "complete",
    "rollback",
];

/// Why a request is not an action.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    #[error("no such action {0:?}; the actions are expand, backfill, pause, resume, validate, switch-reads, contract, complete, rollback")]
    Unknown(String),
    /// The body does not fit the action (serde names an unknown key and
    /// lists the known ones).
    #[error("{0}")]
    Body(String),
}

impl Action {
    /// The action `name` with `body` (`null`: no body).
    pub fn parse(name: &str, body: &Value) -> Result<Action, ActionError> {
        fn options<T: serde::de::DeserializeOwned + Default>(
            name: &str,
            body: &Value,
        ) -> Result<T, ActionError> {
            match body {
                Value::Null => Ok(T::default()),
                other => serde_json::from_value(other.clone())
                    .map_err(|e| ActionError::Body(format!("{name}: {e}"))),
            }
        }
        let none = |_: NoOptions| ();
        Ok(match name {
            "expand" => options(name, body).map(none).map(|()| Action::Expand)?,
            "backfill" => Action::Backfill(options(name, body)?),
            "pause" => options(name, body).map(none).map(|()| Action::Pause)?,
            "resume" => options(name, body).map(none).map(|()| Action::Resume)?,
            "validate" => Action::Validate(options(name, body)?),
            "switch-reads" => {
                Action::SwitchReads(serde_json::from_value(body.clone()).map_err(|e| {
                    ActionError::Body(format!(
                        "switch-reads: {e} (send {{\"to\": \"new\"}} or {{\"to\": \"old\"}})"
                    ))
                })?)
            }
            "contract" => Action::Contract(options(name, body)?),
            "complete" => options(name, body).map(none).map(|()| Action::Complete)?,
            "rollback" => options(name, body).map(none).map(|()| Action::Rollback)?,
            other => return Err(ActionError::Unknown(other.to_string())),
        })
    }

    /// Its name in the URL.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Expand => "expand",
            Action::Backfill(_) => "backfill",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Validate(_) => "validate",
            Action::SwitchReads(_) => "switch-reads",
            Action::Contract(_) => "contract",
            Action::Complete => "complete",
            Action::Rollback => "rollback",
        }
    }

    /// Its options as the JSON body to send (`{}` for none).
    pub fn body(&self) -> Value {
        let options = match self {
            Action::Backfill(o) => serde_json::to_value(o),
            Action::Validate(o) => serde_json::to_value(o),
            Action::SwitchReads(o) => serde_json::to_value(o),
            Action::Contract(o) => serde_json::to_value(o),
            _ => Ok(Value::Object(Default::default())),
        };
        options.unwrap_or(Value::Null)
    }

    /// Whether the action goes on in the background once accepted (202).
    pub fn runs_on(&self) -> bool {
        matches!(self, Action::Backfill(_) | Action::Resume)
    }
}

/// A migration file `pgshift apply` carried out (`GET` and `POST
/// /applied-files`), recorded in `pgshift.applied_files`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedFile {
    /// Its file name (`V2__rename.sql`), the key.
    pub file: String,
    /// SHA-256 of its text, in hex.
    pub checksum: String,
    /// Statements run.
    pub statements: i32,
    /// The pgshift migrations it made.
    #[serde(default)]
    pub migrations: Vec<String>,
    /// When (set by pgshift, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
}

/// `POST /migrations/{id}/autopilot`: what the autopilot does with a
/// migration. `to-switch` expands, backfills, validates and switches reads
/// once no mismatch is found; `full` also contracts once no client has
/// named the old shape for `contract_after_secs`, then completes. `off`
/// stops it (and clears why it stopped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autopilot {
    pub mode: AutopilotMode,
    #[serde(default = "default_contract_after")]
    pub contract_after_secs: u64,
    /// Why it stopped (the first anomaly it met): set by pgshift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

fn default_contract_after() -> u64 {
    600
}

impl Default for Autopilot {
    fn default() -> Self {
        Autopilot {
            mode: AutopilotMode::Off,
            contract_after_secs: default_contract_after(),
            stopped: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutopilotMode {
    #[default]
    #[serde(rename = "off")]
    Off,
    #[serde(rename = "to-switch")]
    ToSwitch,
    #[serde(rename = "full")]
    Full,
}

/// `GET /status`: the proxy and every migration it knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyStatus {
    pub rules_epoch: u64,
    pub database: String,
    pub upstream: String,
    pub migrations: Vec<MigrationStatus>,
}

/// `GET /migrations/{id}` (and the answer of every action): one
/// migration's phase, backfill, last parity check and traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationStatus {
    pub id: String,
    pub op: Op,
    pub table: String,
    pub from: String,
    pub to: String,
    #[serde(rename = "type")]
    pub new_type: Option<String>,
    pub phase: Phase,
    pub read_source: ReadSource,
    pub backfill: BackfillStatus,
    pub validation: Option<ValidationStatus>,
    pub statements: StatementCounts,
    /// Statements of this proxy's clients that named the old column.
    pub old_shape: Option<OldShapeStatus>,
    /// A catalog operation's SQL (what it does, in its plain form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// An index being built for it, now (`pg_stat_progress_create_index`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_build: Option<IndexBuild>,
    /// The autopilot, when it is on or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autopilot: Option<Autopilot>,
}

/// An index build in progress, as `pg_stat_progress_create_index` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexBuild {
    pub phase: String,
    pub blocks_done: i64,
    pub blocks_total: i64,
    pub tuples_done: i64,
    pub tuples_total: i64,
}

/// One worker's share of a backfill split over several workers: the keys
/// after `cursor` up to `upper` (inclusive; `None`: to the end of the
/// table). Its cursor and row count are committed with each of its
/// batches; `/status` lists the slices as they are stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Slice {
    /// Key of the last row done in the slice (its lower bound, exclusive,
    /// before its first batch; `None`: from the table's first key).
    pub cursor: Option<Vec<String>>,
    pub upper: Option<Vec<String>>,
    pub rows_done: i64,
}

/// A backfill's settings and progress, as `/status` reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillStatus {
    pub rows_done: i64,
    /// An estimate until the backfill ends.
    pub rows_total: Option<i64>,
    pub workers: i32,
    pub slices: Vec<Slice>,
    pub running: bool,
    pub paused: bool,
    pub batch_size: i32,
    pub batch_pause_ms: i32,
    pub batch_timeout_ms: i32,
    pub batch_target_ms: i32,
    pub max_replication_lag_ms: i32,
    pub max_lock_waits: i32,
    /// Why the workers wait now (replication lag, lock waits).
    pub throttled: Option<String>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// What stopped the backfill last (Postgres' own message).
    pub error: Option<String>,
}

/// The last parity check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationStatus {
    pub mismatches: i64,
    /// Keys of a few mismatching rows, in key order.
    pub samples: Vec<String>,
    pub at_ms: i64,
}

/// Statements this proxy rewrote or refused for a migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementCounts {
    pub rewritten: u64,
    pub refused: u64,
}

/// Old-shape statements of this proxy's clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OldShapeStatus {
    pub statements: u64,
    /// When the last one was seen (ms since the Unix epoch).
    pub last_ms: u64,
    pub applications: Vec<ApplicationSeen>,
}

/// An `application_name` that sent old-shape statements, and when last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationSeen {
    pub name: String,
    pub last_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_misspelt_key_is_named() {
        let err = Action::parse("backfill", &json!({"batch_sise": 10})).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown field `batch_sise`"), "{text}");
        assert!(
            text.contains("batch_size"),
            "the known keys are listed: {text}"
        );
        assert_eq!(
            Action::parse("backfill", &json!({"batch_size": 10})).unwrap(),
            Action::Backfill(Backfill {
                batch_size: Some(10),
                ..Backfill::default()
            })
        );
        assert_eq!(
            Action::parse("expand", &Value::Null).unwrap(),
            Action::Expand
        );
        assert_eq!(Action::parse("expand", &json!({})).unwrap(), Action::Expand);
        assert!(Action::parse("expand", &json!({"force": true})).is_err());
        assert!(Action::parse("contract", &json!({"force": "yes"})).is_err());
        assert!(matches!(
            Action::parse("explode", &Value::Null),
            Err(ActionError::Unknown(_))
        ));
    }

    #[test]
    fn switch_reads_names_its_two_values() {
        let err = Action::parse("switch-reads", &json!({"to": "newest"})).unwrap_err();
        assert!(err.to_string().contains("`new`"), "{err}");
        assert!(Action::parse("switch-reads", &Value::Null).is_err());
        let to_new = Action::parse("switch-reads", &json!({"to": "new"})).unwrap();
        assert_eq!(to_new.body(), json!({"to": "new"}));
    }

    #[test]
    fn an_action_sent_is_the_action_received() {
        for action in [
            Action::Expand,
            Action::Backfill(Backfill {
                batch_size: Some(500),
                workers: Some(2),
                ..Backfill::default()
            }),
            Action::Validate(Validate {
                fix: Some(true),
                ..Validate::default()
            }),
            Action::Contract(Contract {
                drop_exclusion_constraints: Some(true),
                ..Contract::default()
            }),
            Action::Rollback,
        ] {
            assert_eq!(
                Action::parse(action.name(), &action.body()).unwrap(),
                action
            );
        }
    }

    #[test]
    fn a_new_migration_has_its_keys_and_no_others() {
        let body = json!({"id": "m", "table": "t", "from": "a", "to": "b", "type": "bigint"});
        let m: NewMigration = serde_json::from_value(body).unwrap();
        assert_eq!(m.new_type.as_deref(), Some("bigint"));
        let err = serde_json::from_value::<NewMigration>(
            json!({"id": "m", "table": "t", "from": "a", "to": "b", "phase": "expanded"}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `phase`"), "{err}");
    }

    #[test]
    fn a_status_reads_back_as_it_was_served_and_an_unknown_key_is_refused() {
        let served = json!({
            "rules_epoch": 3, "database": "app", "upstream": "127.0.0.1:5432",
            "migrations": [{
                "id": "m", "op": "copy_column", "table": "public.t", "from": "a", "to": "b", "type": null,
                "phase": "backfilling", "read_source": "old",
                "backfill": {
                    "rows_done": 10, "rows_total": 100, "workers": 2,
                    "slices": [{"cursor": ["5"], "upper": null, "rows_done": 5}],
                    "running": true, "paused": false, "batch_size": 1000,
                    "batch_pause_ms": 0, "batch_timeout_ms": 5000, "batch_target_ms": 0,
                    "max_replication_lag_ms": 0, "max_lock_waits": 0, "throttled": null,
                    "started_ms": 1, "finished_ms": null, "error": null
                },
                "validation": {"mismatches": 1, "samples": ["7"], "at_ms": 2},
                "statements": {"rewritten": 4, "refused": 0},
                "old_shape": {"statements": 2, "last_ms": 9,
                              "applications": [{"name": "v1", "last_ms": 9}]}
            }]
        });
        let status: ProxyStatus = serde_json::from_value(served.clone()).unwrap();
        assert_eq!(status.migrations[0].phase, Phase::Backfilling);
        assert_eq!(status.migrations[0].backfill.slices[0].rows_done, 5);
        assert_eq!(serde_json::to_value(&status).unwrap(), served);
        let mut other = served;
        other["migrations"][0]["backfill"]["rows_left"] = json!(90);
        let err = serde_json::from_value::<ProxyStatus>(other).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `rows_left`"),
            "{err}"
        );
    }
}
