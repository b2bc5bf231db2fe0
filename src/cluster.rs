//! Throwaway PostgreSQL clusters: find the machine's PostgreSQL binaries,
//! `initdb` a cluster in a temporary directory, start it on a free loopback
//! port, and remove it again. `pgshift demo`, the test suite and the
//! benchmark scripts all use this one implementation.
//!
//! Postgres refuses to run as root, so when pgshift runs as root the cluster
//! is created and run as the `postgres` user. A small watchdog process stops
//! the cluster and removes its directory if the process that started it dies
//! without cleaning up (a killed test run, a SIGKILLed demo).

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Server programs a cluster needs.
const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// What to tell a user whose machine has no PostgreSQL server binaries.
pub const INSTALL_HINT: &str = "install the PostgreSQL server: `sudo apt-get install postgresql` \
(Debian/Ubuntu; pgbench comes with it), `sudo dnf install postgresql-server postgresql-contrib` (Fedora/RHEL), \
or `brew install postgresql` (macOS); or set PGSHIFT_PG_BINDIR to the folder holding initdb, pg_ctl and postgres";

/// A cluster that could not be made or run.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in PGSHIFT_PG_BINDIR, PATH, `pg_config --bindir` or /usr/lib/postgresql/*/bin; {INSTALL_HINT}")]
    BinariesNotFound,
    #[error("running as root, but there is no `postgres` user to run the cluster as (Postgres refuses root); create one with `useradd --system postgres`")]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// The folder holding a PostgreSQL installation's programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// Looks in `PGSHIFT_PG_BINDIR`, `PATH`, `pg_config --bindir`, then the
    /// newest `/usr/lib/postgresql/*/bin`.
    pub fn locate() -> Result<PgBinaries, ClusterError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(dir) = std::env::var_os("PGSHIFT_PG_BINDIR") {
            candidates.push(dir.into());
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
                candidates.push(dir.into());
            }
        }
        let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versioned.into_iter().map(|(_, p)| p));
        candidates
            .into_iter()
            // A PATH entry may hold symlinks into the real installation
            // (/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb):
            // use the folder the programs really live in.
            .filter_map(|dir| {
                Some(
                    fs::canonicalize(dir.join("initdb"))
                        .ok()?
                        .parent()?
                        .to_path_buf(),
                )
            })
            .find(|dir| SERVER_TOOLS.iter().all(|t| dir.join(t).is_file()))
            .map(|bindir| PgBinaries { bindir })
            .ok_or(ClusterError::BinariesNotFound)
    }

    /// Path of one program (`pgbench`, `psql`, …): the installation's own,
    /// else the first one on `PATH`, else the bare name.
    pub fn tool(&self, name: &str) -> PathBuf {
        let own = self.bindir.join(name);
        if own.is_file() {
            return own;
        }
        std::env::var_os("PATH")
            .and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| PathBuf::from(name))
    }
}

/// How to set up a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `max_connections` of the server.
    pub max_connections: u32,
    /// `pg_hba.conf` lines placed before the catch-all `trust` lines.
    pub hba_lines: Vec<String>,
    /// Extra `postgresql.conf` settings.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            max_connections: 300,
            hba_lines: Vec::new(),
            settings: Vec::new(),
        }
    }
}

/// A running throwaway cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct Cluster {
    bin: PgBinaries,
    root: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    running: bool,
}

/// The superuser every throwaway cluster is created with.
pub const SUPERUSER: &str = "postgres";

impl Cluster {
    /// Creates and starts a cluster listening on a free port of 127.0.0.1.
    pub fn start(options: &ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin = PgBinaries::locate()?;
        let owner = cluster_owner()?;
        let root = make_root_dir(owner)?;
        let mut cluster = Cluster {
            bin,
            root,
            port: 0,
            owner,
            running: false,
        };
        cluster.init(options)?;
        // A free port can be taken by someone else before Postgres binds it.
        let mut last_err = None;
        for _ in 0..3 {
            cluster.port = free_port()?;
            match cluster.launch(options) {
                Ok(()) => {
                    cluster.running = true;
                    cluster.spawn_watchdog()?;
                    return Ok(cluster);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(ClusterError::BinariesNotFound))
    }

    /// The binaries this cluster runs with.
    pub fn binaries(&self) -> &PgBinaries {
        &self.bin
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the server.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The folder holding the data directory and the server log.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The server log file.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A command for one of the installation's programs, run as the
    /// cluster's owner.
    pub fn command(&self, tool: &str) -> Command {
        self.command_as_owner(self.bin.tool(tool))
    }

    /// Any program, run as the cluster's owner in the cluster's folder (for
    /// servers that, like Postgres, refuse to run as root: PgBouncer).
    pub fn command_as_owner(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Runs `psql` directly against the server (not through pgshift) and
    /// returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        let port = self.port.to_string();
        let out = self
            .command("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .args([port.as_str(), "-U", SUPERUSER, "-d", database, "-c", sql])
            .output()
            .map_err(io_err("running psql"))?;
        check("psql", &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn init(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let data = self.data_dir();
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .map_err(io_err("running initdb"))?;
        check("initdb", &out)?;
        let mut hba = String::from("# written by pgshift for a throwaway cluster\n");
        for line in &options.hba_lines {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n",
        );
        let hba_path = data.join("pg_hba.conf");
        fs::write(&hba_path, hba).map_err(io_err("writing pg_hba.conf"))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&hba_path, Some(uid), Some(gid))
                .map_err(io_err("chown pg_hba.conf"))?;
        }
        Ok(())
    }

    fn launch(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), "'127.0.0.1'".into()),
            ("port".into(), self.port.to_string()),
            (
                "unix_socket_directories".into(),
                format!("'{}'", self.root.display()),
            ),
            (
                "max_connections".into(),
                options.max_connections.to_string(),
            ),
            // A throwaway cluster: durability buys nothing here.
            ("fsync".into(), "off".into()),
            ("synchronous_commit".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("shared_buffers".into(), "128MB".into()),
        ];
        settings.extend(options.settings.iter().cloned());
        let conf: String = settings
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        let auto = self.data_dir().join("postgresql.auto.conf");
        fs::write(&auto, conf).map_err(io_err("writing postgresql.auto.conf"))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&auto, Some(uid), Some(gid))
                .map_err(io_err("chown postgresql.auto.conf"))?;
        }
        let out = self.pg_ctl(&["start"], "running pg_ctl start")?;
        check("pg_ctl start", &out).map_err(|e| {
            let log = fs::read_to_string(self.log_file()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            ClusterError::Command {
                what: "starting Postgres".into(),
                detail: format!(
                    "{e}; log: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            }
        })
    }

    /// Starts a process that stops the cluster and removes its folder once
    /// this process is gone.
    fn spawn_watchdog(&self) -> Result<(), ClusterError> {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; \"$0\" -D \"$1\" stop -m immediate >/dev/null 2>&1; rm -rf \"$2\"",
            pid = std::process::id()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg(self.bin.tool("pg_ctl"))
            .arg(self.data_dir())
            .arg(&self.root)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.spawn()
            .map_err(io_err("starting the cluster watchdog"))?;
        Ok(())
    }

    /// Runs `pg_ctl -D data -l log -w -t 60 ARGS` and waits for it.
    fn pg_ctl(&self, args: &[&str], what: &'static str) -> Result<Output, ClusterError> {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "60"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(what))
    }

    /// Restarts the server (`pg_ctl restart -m fast`), for fault tests.
    pub fn restart(&self) -> Result<(), ClusterError> {
        let out = self.pg_ctl(&["-m", "fast", "restart"], "running pg_ctl restart")?;
        check("pg_ctl restart", &out)
    }

    /// Stops the server and removes the cluster's folder. The shutdown is
    /// `immediate`: the folder is deleted right after, so the shutdown
    /// checkpoint a fast shutdown writes (seconds after a heavy run) would
    /// be wasted.
    pub fn stop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-m", "immediate", "stop"])
                .stdin(Stdio::null())
                .output();
            self.running = false;
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn check(what: &str, out: &Output) -> Result<(), ClusterError> {
    if out.status.success() {
        return Ok(());
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(ClusterError::Command {
        what: what.into(),
        detail: format!("{} ({})", detail, out.status),
    })
}

/// `Some((uid, gid))` of the `postgres` user when running as root.
fn cluster_owner() -> Result<Option<(u32, u32)>, ClusterError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("reading /etc/passwd"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4 && fields[0] == "postgres" {
                Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
            } else {
                None
            }
        })
        .map(Some)
        .ok_or(ClusterError::NoPostgresUser)
}

fn make_root_dir(owner: Option<(u32, u32)>) -> Result<PathBuf, ClusterError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "pgshift-{}-{}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    );
    let root = std::env::temp_dir().join(name);
    fs::create_dir(&root).map_err(io_err(format!("creating {}", root.display())))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
        .map_err(io_err("chmod cluster folder"))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&root, Some(uid), Some(gid))
            .map_err(io_err("chown cluster folder"))?;
    }
    Ok(root)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}
