//! The proxies serving one database, and how a phase change reaches all of
//! them: every change of the migrations bumps `pgshift.state.version`;
//! each proxy polls it, reloads and publishes the new rules, and records
//! the version it applied (with a heartbeat) in `pgshift.proxies`. The
//! proxy that runs an action waits until every live proxy has applied the
//! new version, or fails naming the ones that have not.

use std::time::Duration;

use tokio_postgres::Client;

use super::store::NOW_MS;

/// Timing of the coordination.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long an action waits for the other proxies to apply it.
    pub ack_timeout: Duration,
    /// A proxy whose heartbeat is older than this is gone (not waited for).
    pub proxy_timeout: Duration,
    /// How often each proxy polls the state version (and heartbeats).
    pub poll: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ack_timeout: Duration::from_secs(10),
            proxy_timeout: Duration::from_secs(15),
            poll: Duration::from_millis(200),
        }
    }
}

/// Bumps the state version; returns the new one.
pub async fn bump(client: &Client) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "update pgshift.state set version = version + 1 returning version",
            &[],
        )
        .await?
        .get(0))
}

/// The state version (every poll: one round trip, the statement sent with
/// its types rather than prepared, executed and closed).
pub async fn version(client: &Client) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_typed_one("select version from pgshift.state", &[])
        .await?
        .get(0))
}

/// A proxy's old-shape usage of one migration as its heartbeat publishes
/// it (`pgshift.proxies.old_shape` maps each migration id to one).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeartbeatUsage {
    pub statements: u64,
    pub last_ms: u64,
    /// Each application's last old-shape statement (ms since the epoch).
    pub applications: std::collections::BTreeMap<String, u64>,
}

/// A heartbeat's `old_shape`: each migration's usage, by its id.
pub type OldShapeByMigration = std::collections::BTreeMap<String, HeartbeatUsage>;

/// Records that proxy `id` (at `address`) is alive and has applied `applied`.
/// `old_shape` is this proxy's old-shape usage, by migration id.
pub async fn heartbeat(
    client: &Client,
    id: &str,
    address: &str,
    applied: i64,
    old_shape: &OldShapeByMigration,
) -> Result<(), tokio_postgres::Error> {
    // A map of strings and numbers always serializes.
    let old_shape = serde_json::to_string(old_shape).unwrap_or_else(|_| "{}".into());
    // Every poll: one round trip (typed, not prepared).
    use tokio_postgres::types::Type;
    client
        .query_typed(
            &format!(
                "insert into pgshift.proxies (id, address, applied_version, heartbeat_ms, started_ms, old_shape)
                 values ($1, $2, $3, {NOW_MS}, {NOW_MS}, $4::text::jsonb)
                 on conflict (id) do update set applied_version = greatest(pgshift.proxies.applied_version, excluded.applied_version),
                                                heartbeat_ms = excluded.heartbeat_ms, address = excluded.address,
                                                old_shape = excluded.old_shape"
            ),
            &[
                (&id, Type::TEXT),
                (&address, Type::TEXT),
                (&applied, Type::INT8),
                (&old_shape, Type::TEXT),
            ],
        )
        .await?;
    Ok(())
}

/// Applications that sent old-shape statements for `migration` within
/// `window`, through any live proxy: (application, proxy, Unix ms).
pub async fn old_shape_users(
    client: &Client,
    migration: &str,
    window: Duration,
    options: Options,
) -> Result<Vec<(String, String, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "select app.key, p.id, app.value::bigint
                   from pgshift.proxies p,
                        jsonb_each_text(coalesce(p.old_shape -> $1 -> 'applications', '{{}}'::jsonb)) app
                  where p.heartbeat_ms > {NOW_MS} - $2 and app.value::bigint > {NOW_MS} - $3
                  order by 3 desc"
            ),
            &[
                &migration,
                &(options.proxy_timeout.as_millis() as i64),
                &(window.as_millis() as i64),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Removes proxy `id` (a clean shutdown).
pub async fn leave(client: &Client, id: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute("delete from pgshift.proxies where id = $1", &[&id])
        .await?;
    Ok(())
}

/// Waits until every live proxy has applied `version`; `Err` names the
/// ones that did not within the timeout.
pub async fn wait_for(client: &Client, version: i64, options: Options) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + options.ack_timeout;
    let live_ms = options.proxy_timeout.as_millis() as i64;
    loop {
        let behind = client
            .query(
                &format!(
                    "select id, address, applied_version from pgshift.proxies
                      where heartbeat_ms > {NOW_MS} - $1 and applied_version < $2 order by id"
                ),
                &[&live_ms, &version],
            )
            .await
            .map_err(|e| format!("cannot read pgshift.proxies: {e}"))?;
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let names: Vec<String> = behind
                .iter()
                .map(|r| {
                    format!(
                        "{} at {} (applied version {})",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, i64>(2)
                    )
                })
                .collect();
            return Err(format!(
                "the change (state version {version}) is stored and in force here, but {} did not apply it within {} ms; its sessions may still use the previous rules",
                names.join(", "),
                options.ack_timeout.as_millis()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
