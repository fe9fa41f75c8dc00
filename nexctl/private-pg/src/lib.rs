//! A private PostgreSQL cluster in a directory of its own, started from the installed server
//! binaries (`initdb`, `pg_ctl`): `nexctl up`'s embedded default when no `DATABASE_URL` is
//! given, and the database the end-to-end suite restarts in the middle of a flow (which it
//! could not do to a server other tests share).
//!
//! PostgreSQL refuses to run as root, so when `nexctl` runs as root the cluster is created and
//! run as the `postgres` system user (via `runuser`), which owns the cluster directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

/// A running private cluster; [`PrivatePostgres::stop`] shuts it down (also on drop).
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<String>,
    stopped: bool,
}

/// Where the server binaries are: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
        .context("PostgreSQL server binaries not found: install the `postgresql` package or set DATABASE_URL")
}

/// Where the cluster of a data directory lives: `<data>/postgres`, except when running as root
/// and the `postgres` user could not reach it (a parent such as /root is not searchable by
/// others): then under /var/tmp, named after the data directory.
pub fn cluster_dir(data: &Path) -> PathBuf {
    let inside = data.join("postgres");
    if !is_root() || searchable_by_others(data) {
        return inside;
    }
    let tag = hex::encode(
        &ring::digest::digest(&ring::digest::SHA256, data.as_os_str().as_encoded_bytes()).as_ref()
            [..8],
    );
    PathBuf::from(format!("/var/tmp/nexus-postgres-{tag}"))
}

#[cfg(unix)]
fn searchable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors().all(|p| {
        p.as_os_str().is_empty()
            || std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    })
}

#[cfg(not(unix))]
fn searchable_by_others(_: &Path) -> bool {
    true
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PrivatePostgres {
    /// Creates the cluster in `data` on first use, then starts it on 127.0.0.1:`port`.
    pub fn start(data: &Path, port: u16) -> anyhow::Result<Self> {
        let bin = find_bindir()?;
        let run_as = is_root().then(|| "postgres".to_owned());
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let data = data.canonicalize()?;
        let mut pg = Self {
            bin,
            data,
            port,
            run_as,
            stopped: false,
        };
        if let Some(user) = &pg.run_as {
            let ok = Command::new("chown")
                .args(["-R", &format!("{user}:{user}")])
                .arg(&pg.data)
                .status()?
                .success();
            if !ok {
                bail!("cannot give {} to the {user} user", pg.data.display());
            }
        }
        if !pg.data.join("PG_VERSION").exists() {
            pg.run(
                "initdb",
                &[
                    "-D",
                    &pg.data.display().to_string(),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
            )
            .context("initdb")?;
        }
        let opts = pg.server_options();
        pg.run(
            "pg_ctl",
            &[
                "-D",
                &pg.data.display().to_string(),
                "-l",
                &pg.data.join("server.log").display().to_string(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .with_context(|| {
            format!(
                "starting PostgreSQL (log: {})",
                pg.data.join("server.log").display()
            )
        })?;
        pg.stopped = false;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a database if it does not exist.
    pub fn ensure_database(&self, db: &str) -> anyhow::Result<()> {
        let out = self
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-tAc",
            ])
            .arg(format!("SELECT 1 FROM pg_database WHERE datname = '{db}'"))
            .output()?;
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            return Ok(());
        }
        self.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                db,
            ],
        )
    }

    /// Restarts the cluster (fast shutdown, then start): every session is cut, as in a
    /// database failover or a crash of the server process; committed data is kept.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let opts = self.server_options();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-l",
                &self.data.join("server.log").display().to_string(),
                "-o",
                &opts,
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "restart",
            ],
        )
    }

    fn server_options(&self) -> String {
        format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.data.display()
        )
    }

    /// Stops the cluster (fast shutdown: sessions are closed, data is kept).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(&self.data)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping the private PostgreSQL: {e:#}");
        }
    }
}

/// Waits until `url` accepts connections.
pub async fn wait_ready(url: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if sqlx_ping(url).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("PostgreSQL at {url} did not become ready")
}

async fn sqlx_ping(url: &str) -> bool {
    use sqlx::Connection;
    match sqlx::PgConnection::connect(url).await {
        Ok(c) => c.close().await.is_ok(),
        Err(_) => false,
    }
}
