//! pgshift: a PostgreSQL wire-protocol proxy that makes column renames and
//! column type changes zero-downtime.
//!
//! - [`proxy`]: the wire protocol — listener, TLS, authentication relay,
//!   per-session relay, cancel, limits.
//! - [`rewrite`]: the statement rewrite seam the relay calls for every
//!   Query and Parse (pure: SQL in, SQL out), and the migration rules.
//! - [`lifecycle`]: the migration lifecycle (expand, backfill, validate,
//!   switch reads, contract, rollback) and its durable state.
//! - [`admin`]: the admin HTTP port; [`admin_client`]: the CLI's side;
//!   [`api`]: the requests both sides (and the lifecycle) share, typed.
//! - [`control`]: pgshift's own connections to the upstream and the catalog.
//! - [`config`]: the TOML file, flags and environment, merged.
//! - [`cluster`]: throwaway local Postgres clusters for the demo and tests.
//! - [`demo`]: `pgshift demo`; [`scenario`]: the workload it runs.
//! - [`telemetry`]: logging set-up; [`metrics`]: the Prometheus metrics.
//! - [`pgerror`]: Postgres' errors on pgshift's own connections, in full.
//!
//! The library exists for the binary and its tests; its documentation is
//! for the engineers who work on pgshift and links private items:
//! read it with `cargo doc --document-private-items --open`.

#![allow(rustdoc::private_intra_doc_links)]

pub mod add_column;
pub mod admin;
pub mod admin_client;
pub mod api;
pub mod apply;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod lifecycle;
pub mod metrics;
pub mod names;
pub mod ops;
pub mod pgerror;
pub mod plan_db;
pub mod proxy;
pub mod rewrite;
pub mod scenario;
pub mod sql_plan;
pub mod telemetry;

#[cfg(test)]
mod layout_tests {
    use std::path::Path;

    /// Every source file opens with a `//!` header saying what it owns.
    #[test]
    fn every_module_has_a_header() {
        fn walk(dir: &Path, missing: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("src is readable").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, missing);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    if !text.starts_with("//!") {
                        missing.push(path.display().to_string());
                    }
                }
            }
        }
        let mut missing = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut missing,
        );
        assert!(
            missing.is_empty(),
            "files without a //! header: {missing:?}"
        );
    }

    /// The modules of `src/` (as `a::b`) and the code of each, tests and
    /// comments left out.
    fn modules() -> Vec<(String, String)> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).expect("src is readable").flatten() {
                let path = entry.path();
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let name = match prefix {
                    "" => stem.to_string(),
                    p => format!("{p}::{stem}"),
                };
                if path.is_dir() {
                    walk(&path, &name, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let name = match stem {
                        "mod" => prefix.to_string(),
                        _ => name,
                    };
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let code: String = text
                        .split("#[cfg(test)]")
                        .next()
                        .unwrap_or("")
                        .lines()
                        .filter(|l| !l.trim_start().starts_with("//"))
                        .collect::<Vec<_>>()
                        .join("\n");
                    out.push((name, code));
                }
            }
        }
        let mut out = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            "",
            &mut out,
        );
        out
    }

    /// The modules `code` (of module `name`) names through `crate::` and
    /// `super::` paths, among `known`.
    fn uses(name: &str, code: &str, known: &[String]) -> Vec<String> {
        let parent = name.rsplit_once("::").map_or("", |(p, _)| p);
        let mut found = Vec::new();
        for (marker, base) in [("crate::", ""), ("super::", parent)] {
            for (at, _) in code.match_indices(marker) {
                let rest = &code[at + marker.len()..];
                let path: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                // `prefix::{a, b::c}`: each item, after the prefix.
                let group = rest[path.len()..]
                    .strip_prefix('{')
                    .and_then(|g| g.split_once('}'))
                    .map(|(items, _)| items);
                let items: Vec<String> = match group {
                    Some(items) => items
                        .split(',')
                        .map(|i| format!("{path}{}", i.split_whitespace().next().unwrap_or("")))
                        .collect(),
                    None => vec![path],
                };
                for item in items {
                    let mut parts: Vec<&str> = item.split("::").filter(|p| !p.is_empty()).collect();
                    while !parts.is_empty() {
                        let candidate = match base {
                            "" => parts.join("::"),
                            b => format!("{b}::{}", parts.join("::")),
                        };
                        if known.contains(&candidate) && candidate != name {
                            found.push(candidate);
                            break;
                        }
                        parts.pop();
                    }
                }
            }
        }
        found
    }

    /// No two modules use each other (a parent's items used by a child
    /// aside: the child is part of the parent).
    #[test]
    fn no_two_modules_use_each_other() {
        let all = modules();
        let known: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
        let edges: Vec<(String, String)> = all
            .iter()
            .flat_map(|(n, code)| uses(n, code, &known).into_iter().map(|u| (n.clone(), u)))
            .collect();
        let circles: Vec<String> = edges
            .iter()
            .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
            .filter(|(a, b)| !b.starts_with(&format!("{a}::")) && !a.starts_with(&format!("{b}::")))
            .map(|(a, b)| format!("{a} <-> {b}"))
            .collect();
        assert!(
            circles.is_empty(),
            "modules that use each other: {circles:?}"
        );
    }
}
