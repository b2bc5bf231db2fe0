//! The other proxy the benchmarks compare with (PgBouncer, installed with
//! apt-get when missing and we are root) and a process's CPU time.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use pgshift::cluster::{Cluster, SUPERUSER};

use super::{wait_for_port, Server};

pub fn pgbouncer_path() -> Result<PathBuf> {
    for p in [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ] {
        if std::path::Path::new(p).is_file() {
            return Ok(p.into());
        }
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("installing pgbouncer with apt-get…");
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "pgbouncer"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if status.success() {
            return pgbouncer_path_installed();
        }
    }
    bail!("PgBouncer is not installed: `sudo apt-get install pgbouncer`")
}

fn pgbouncer_path_installed() -> Result<PathBuf> {
    let p = PathBuf::from("/usr/sbin/pgbouncer");
    if p.is_file() {
        Ok(p)
    } else {
        bail!("apt-get installed pgbouncer but /usr/sbin/pgbouncer is missing")
    }
}

/// How a PgBouncer is reached and reaches Postgres.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bouncer {
    /// Loopback TCP both ways.
    Tcp,
    /// Unix sockets both ways: it listens in the cluster's socket
    /// directory (and on TCP, to be waited for) and reaches Postgres there.
    Unix,
}

/// A running PgBouncer and its pid file.
pub struct PgBouncer {
    _server: Server,
    pid_file: PathBuf,
}

impl PgBouncer {
    /// Its process id (the one that serves: PgBouncer writes it).
    pub fn pid(&self) -> Result<u32> {
        std::fs::read_to_string(&self.pid_file)?
            .trim()
            .parse()
            .context("pgbouncer's pid file")
    }
}

/// PgBouncer in session mode on `port` in front of `cluster`, a pool of
/// `pool` server connections, trust authentication.
pub fn start_pgbouncer(cluster: &Cluster, port: u16, pool: u32, how: Bouncer) -> Result<PgBouncer> {
    let root = cluster.root();
    let name = format!("pgbouncer-{port}");
    let ini = root.join(format!("{name}.ini"));
    let users = root.join("userlist.txt");
    std::fs::write(&users, format!("\"{SUPERUSER}\" \"\"\n"))?;
    let (host, socket_dir) = match how {
        Bouncer::Tcp => ("127.0.0.1".to_string(), String::new()),
        Bouncer::Unix => {
            let dir = root.display().to_string();
            (dir.clone(), dir)
        }
    };
    let pid_file = root.join(format!("{name}.pid"));
    std::fs::write(
        &ini,
        format!(
            "[databases]\n* = host={host} port={upstream}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir = {socket_dir}\nauth_type = trust\nauth_file = {users}\npool_mode = session\nmax_client_conn = 2000\n\
             default_pool_size = {pool}\nlogfile = {log}\npidfile = {pid}\nlog_connections = 0\nlog_disconnections = 0\n",
            upstream = cluster.port(),
            users = users.display(),
            log = root.join(format!("{name}.log")).display(),
            pid = pid_file.display(),
        ),
    )?;
    let child = cluster
        .command_as_owner(pgbouncer_path()?)
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pgbouncer")?;
    let server = Server(child);
    wait_for_port(port)?;
    Ok(PgBouncer {
        _server: server,
        pid_file,
    })
}

/// A process's CPU time so far (user + system), in microseconds.
pub fn cpu_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name in parentheses: field 3 on; utime and stime
    // are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        let v = fields.get(i).context("a short /proc/PID/stat")?;
        Ok(v.parse::<f64>()?)
    };
    // (utime is field 14: index 11 after the state field, which is 3.)
    let per_tick = 1e6 / clock_ticks_per_second();
    Ok((ticks(11)? + ticks(12)?) * per_tick)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}
