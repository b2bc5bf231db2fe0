//! pgshift: a PostgreSQL wire-protocol proxy that makes column renames and
//! column type changes zero-downtime.
//!
//! - [`proxy`]: the wire protocol — listener, per-connection relay, cancel.
//! - [`rewrite`]: the statement rewrite seam the relay calls for every
//!   Query and Parse (pure: SQL in, SQL out).
//! - [`config`]: the TOML file, flags and environment, merged.
//! - [`cluster`]: throwaway local Postgres clusters for the demo and tests.
//! - [`demo`]: `pgshift demo`, the embedded default.
//! - [`telemetry`]: logging set-up.
//! - [`pgerror`]: Postgres' errors on pgshift's own connections, in full.

pub mod admin;
pub mod admin_client;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod lifecycle;
pub mod pgerror;
pub mod proxy;
pub mod rewrite;
pub mod scenario;
pub mod telemetry;
