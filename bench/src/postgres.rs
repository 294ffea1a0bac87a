//! The PostgreSQL server the cluster section's nodes share: a fresh database cluster in the
//! benchmark's temporary directory, listening on a loopback port.
//!
//! Owns finding the installed PostgreSQL, `initdb`, starting and stopping the server and
//! creating the database. PostgreSQL refuses to run as root, so when the benchmark runs as
//! root its directory is given to the `postgres` account and the server programs run through
//! `runuser -u postgres --`. [`Postgres`]'s `Drop` stops the server (`pg_ctl stop -m fast`)
//! and removes its directory, on every exit path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

use crate::chromium::TempRoot;
use crate::gateway::free_port;

/// Where Debian installs PostgreSQL, one directory per major version.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";
/// What to tell a user without PostgreSQL.
pub(crate) const INSTALL_HINT: &str = "PostgreSQL is not installed (no /usr/lib/postgresql/<version>/bin/initdb): install it with `apt-get install postgresql`";

/// A running PostgreSQL server. Dropping it stops the server and removes its files.
pub(crate) struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Whether the server was started (and so has to be stopped).
    running: bool,
}

/// The `bin` directory of the newest installed PostgreSQL, if any.
pub(crate) fn find() -> Option<PathBuf> {
    let versions = std::fs::read_dir(INSTALL_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("bin/initdb").is_file())
        .filter_map(|e| e.file_name().into_string().ok());
    let newest = newest_version(versions)?;
    Some(Path::new(INSTALL_ROOT).join(newest).join("bin"))
}

/// The highest of version directory names (`9.6`, `15`, `16`), compared number by number.
fn newest_version(names: impl Iterator<Item = String>) -> Option<String> {
    let key = |name: &str| -> Vec<u64> {
        name.split('.')
            .map(|part| part.parse().unwrap_or(0))
            .collect()
    };
    names.max_by(|a, b| key(a).cmp(&key(b)))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Postgres {
    /// Creates a database cluster under `root` with the programs in `bin`, starts it and
    /// waits until it accepts connections.
    pub(crate) fn start(bin: PathBuf, root: &TempRoot) -> Result<Postgres> {
        // Short: the server's Unix socket lives here, and socket paths are limited to ~107 bytes.
        let dir = root.path().join("pg");
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let as_postgres = is_root();
        let mut pg = Postgres {
            dir,
            bin,
            port: free_port()?.port(),
            as_postgres,
            running: false,
        };
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&pg.dir))
                .context("cannot give PostgreSQL's directory to the postgres account")?;
        }
        let data = pg.data();
        pg.run_server_program(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "ingot",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let log = pg.dir.join("server.log").display().to_string();
        pg.running = true;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            pg.port,
            pg.dir.display()
        );
        pg.run_server_program(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-w", "-t", "30", "-o", &options, "start",
            ],
        )
        .with_context(|| format!("PostgreSQL did not start; its log:\n{}", pg.log_tail()))?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs one of the server's programs, as `postgres` when the benchmark is root.
    fn run_server_program(&self, program: &str, args: &[&str]) -> Result<Output> {
        let program = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&program);
            cmd
        } else {
            Command::new(&program)
        };
        cmd.args(args).current_dir(&self.dir);
        run(&mut cmd)
    }

    /// Creates an empty database.
    pub(crate) fn create_database(&self, name: &str) -> Result<()> {
        let port = self.port.to_string();
        run(Command::new(self.bin.join("createdb")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "ingot",
            name,
        ]))
        .map(drop)
    }

    /// A URL for `database` on this server, as ingot's `--database-url` takes it.
    pub(crate) fn url(&self, database: &str) -> String {
        format!("postgres://ingot@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's version line (`pg_ctl (PostgreSQL) 15.14 …`), for the report.
    pub(crate) fn version(&self) -> String {
        Command::new(self.bin.join("pg_ctl"))
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .and_then(|v| v.strip_prefix("pg_ctl (PostgreSQL) ").map(str::to_owned))
            .map_or_else(|| "PostgreSQL".to_owned(), |v| format!("PostgreSQL {v}"))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Runs a command to its end; a failure carries its output.
fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let stop = |mode: &str| {
            self.run_server_program(
                "pg_ctl",
                &["-D", &data, "-m", mode, "-w", "-t", "30", "stop"],
            )
        };
        if self.running
            && let Err(e) = stop("fast")
        {
            eprintln!("cleanup: PostgreSQL did not stop with -m fast ({e:#}); trying -m immediate");
            let _ = stop("immediate");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: cannot remove {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::newest_version;

    #[test]
    fn the_newest_version_is_compared_by_number() {
        let names = ["9.6", "15", "13", "16"].map(String::from);
        assert_eq!(newest_version(names.into_iter()), Some("16".to_owned()));
        let names = ["9.6", "10"].map(String::from);
        assert_eq!(newest_version(names.into_iter()), Some("10".to_owned()));
        assert_eq!(newest_version(std::iter::empty()), None);
    }
}
