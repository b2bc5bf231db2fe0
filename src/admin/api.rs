//! The admin API's request bodies, typed: what each endpoint accepts, with
//! every key named (an unknown or misspelt key is a 400 naming it, never
//! ignored). The server checks a body against its type before the
//! lifecycle reads it; the command line builds the same keys.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /migrations`: the keys of a `[[migrations]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMigration {
    pub id: String,
    pub table: String,
    pub from: String,
    pub to: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub new_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
}

/// `POST /migrations/{id}/backfill` (and its settings while it runs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    pub batch_size: Option<i64>,
    pub batch_pause_ms: Option<i64>,
    pub batch_timeout_ms: Option<i64>,
    pub batch_target_ms: Option<i64>,
    pub max_replication_lag_ms: Option<i64>,
    pub max_lock_waits: Option<i64>,
    pub workers: Option<i64>,
}

/// `POST /migrations/{id}/validate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    pub fix: Option<bool>,
    pub range_rows: Option<u64>,
    pub pause_ms: Option<u64>,
    pub one_pass_ms: Option<u64>,
}

/// `POST /migrations/{id}/switch-reads`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchReads {
    /// `"new"` or `"old"`.
    pub to: String,
}

/// `POST /migrations/{id}/contract`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub force: Option<bool>,
    pub window_secs: Option<u64>,
}

/// The actions that take no options (`expand`, `pause`, `resume`,
/// `complete`, `rollback`): an empty body or `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// The actions `POST /migrations/{id}/{action}` knows.
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

/// Checks `body` against what `action` accepts; `Err` says what is wrong
/// (serde names an unknown key and lists the known ones).
pub fn check_action_body(action: &str, body: &Value) -> Result<(), String> {
    let body = match body {
        Value::Null => return Ok(()),
        other => other.clone(),
    };
    let result = match action {
        "backfill" => serde_json::from_value::<Backfill>(body).map(drop),
        "validate" => serde_json::from_value::<Validate>(body).map(drop),
        "switch-reads" => serde_json::from_value::<SwitchReads>(body).map(drop),
        "contract" => serde_json::from_value::<Contract>(body).map(drop),
        _ => serde_json::from_value::<NoOptions>(body).map(drop),
    };
    result.map_err(|e| format!("{action}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_misspelt_key_is_named() {
        let err = check_action_body("backfill", &json!({"batch_sise": 10})).unwrap_err();
        assert!(err.contains("unknown field `batch_sise`"), "{err}");
        assert!(
            err.contains("batch_size"),
            "the known keys are listed: {err}"
        );
        assert!(check_action_body("backfill", &json!({"batch_size": 10})).is_ok());
        assert!(check_action_body("expand", &Value::Null).is_ok());
        assert!(check_action_body("expand", &json!({})).is_ok());
        assert!(check_action_body("expand", &json!({"force": true})).is_err());
        assert!(check_action_body("contract", &json!({"force": "yes"})).is_err());
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
}
