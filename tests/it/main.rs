//! Integration tests: every test talks to a real Postgres through a real
//! pgshift, with real clients (tokio-postgres, psql, pgbench, raw sockets).

mod add_column;
mod admin;
mod apply;
mod autopilot;
mod battery;
mod catalog;
mod catalog_ops;
mod cli;
mod ddl_migrate;
mod drop_column;
mod faults;
mod frameworks;
mod harness;
mod in_place;
mod kept_name;
mod lifecycle;
mod locks;
mod oracle;
mod protocol;
mod refusal;
mod rename_table;
mod rewriting;
mod tls;
mod tools;
mod unix;
