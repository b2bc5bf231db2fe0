//! Forwarding a CancelRequest. The key in it is the upstream server's own
//! (pgshift passes BackendKeyData through untouched), so the packet goes to
//! the upstream as it is, over a fresh connection (TLS as `upstream_tls`
//! says), whichever pgshift instance received it.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use super::upstream::connect_upstream;
use super::Shared;

/// How long to wait for the upstream to acknowledge a cancel by closing.
const CANCEL_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `packet` (a whole CancelRequest) to the upstream. Postgres never
/// answers a cancel, so neither does pgshift; failures are only logged.
pub(crate) async fn forward(shared: &Shared, packet: Bytes) {
    let config = &shared.config;
    let mut server = match connect_upstream(shared).await {
        Ok(server) => server,
        Err(reason) => {
            warn!(upstream = %config.upstream, %reason, "cannot forward a cancel request");
            return;
        }
    };
    if let Err(e) = server.write_all(&packet).await {
        warn!(upstream = %config.upstream, error = %e, "cannot forward a cancel request");
        return;
    }
    // Postgres closes the connection once it has handled the request.
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(CANCEL_ACK_TIMEOUT, server.read(&mut sink)).await;
    debug!("forwarded a cancel request");
}
