//! The unix-socket listener beside the TCP one (`listen_unix`): the socket
//! file `.s.PGSQL.{port}` in the configured directory, as libpq and
//! Postgres name it, so `psql -h DIR -p PORT` finds pgshift. A stale file
//! left by a process that died is replaced; one another server still
//! listens on is an error. The file is removed when the listener is
//! dropped.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

use crate::config::socket_file;

/// A bound unix socket and its file.
pub(crate) struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixSocket {
    /// Binds `dir/.s.PGSQL.{port}`, readable and writable by every local
    /// user (Postgres' default `unix_socket_permissions`: authentication
    /// is the upstream's).
    pub fn bind(dir: &Path, port: u16) -> io::Result<UnixSocket> {
        let path = socket_file(dir, port);
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another server listens on {}", path.display()),
                ));
            }
            warn!(path = %path.display(), "replacing a stale unix socket file");
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind {}: {e}", path.display()))
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        Ok(UnixSocket { listener, path })
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next connection on `socket`; never completes without one.
    pub async fn accept(socket: Option<&UnixSocket>) -> io::Result<UnixStream> {
        match socket {
            Some(socket) => socket.listener.accept().await.map(|(stream, _)| stream),
            None => std::future::pending().await,
        }
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
