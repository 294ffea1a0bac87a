//! A PostgreSQL server for one test: a fresh cluster in a temporary directory, listening on a
//! loopback port (or, with [`Postgres::start_in`], on a network namespace's address), run as
//! the unprivileged `postgres` account when the tests run as root (PostgreSQL refuses to run
//! as root), and stopped when dropped. Its unix socket is in that directory, so the test
//! reads the database through it even while a namespace's network is cut.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running PostgreSQL server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// The address it listens on.
    listen: String,
    /// The network namespace it runs in, when not the test's own.
    netns: Option<String>,
}

/// The newest installed PostgreSQL's programs.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: run `apt-get install postgresql` \
             (tests/run.sh installs it through deploy/install-deps.sh --tests)"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    euid == 0
}

impl Postgres {
    /// Starts a new server and waits until it accepts connections.
    pub fn start() -> Postgres {
        // A port found free can be taken by another test before the server binds it (the
        // suite runs tests in parallel): then it starts again on another port.
        const TRIES: usize = 3;
        for attempt in 1..=TRIES {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port");
            match Postgres::init("127.0.0.1".into(), port, None) {
                Ok(pg) => return pg,
                Err(why) if attempt < TRIES => {
                    eprintln!("PostgreSQL did not start on port {port}, trying another: {why}");
                }
                Err(why) => panic!("PostgreSQL did not start in {TRIES} tries: {why}"),
            }
        }
        unreachable!("the last try returns or panics")
    }

    /// Starts a new server inside network namespace `netns`, listening on `addr:5432`
    /// (and on its unix socket, which [`Postgres::sql`] then uses).
    pub fn start_in(netns: &str, addr: Ipv4Addr) -> Postgres {
        Postgres::init(addr.to_string(), 5432, Some(netns.to_owned()))
            .unwrap_or_else(|why| panic!("PostgreSQL did not start in {netns}: {why}"))
    }

    /// Makes a cluster and starts it; the error (with the server's log) when it does not
    /// start. The temporary directory goes with the value either way.
    fn init(listen: String, port: u16, netns: Option<String>) -> Result<Postgres, String> {
        let dir = tempfile::Builder::new()
            .prefix("ingot-pg-")
            .tempdir()
            .expect("tempdir");
        if is_root() {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()));
        }
        let pg = Postgres {
            bin: bin_dir(),
            port,
            dir,
            listen,
            netns,
        };
        let data = pg.data();
        pg.run_as_postgres(
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
        );
        if pg.netns.is_some() {
            // initdb trusts loopback only; the nodes connect from their own namespaces.
            let hba = pg.dir.path().join("data").join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            rules.push_str("\nhost all all 0.0.0.0/0 trust\n");
            std::fs::write(&hba, rules).expect("pg_hba.conf written");
        }
        pg.try_start().map(|()| pg)
    }

    fn options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses={} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display(),
            self.listen
        )
    }

    /// Starts the server (again, after [`Postgres::stop`]) and waits until it accepts
    /// connections.
    pub fn start_again(&self) {
        self.try_start()
            .unwrap_or_else(|why| panic!("PostgreSQL did not start again: {why}"));
    }

    fn try_start(&self) -> Result<(), String> {
        let log = self.dir.path().join("server.log").display().to_string();
        let (data, options) = (self.data(), self.options());
        let args = [
            "-D", &data, "-l", &log, "-w", "-t", "30", "-o", &options, "start",
        ];
        try_run(&mut self.as_postgres("pg_ctl", &args))
            .map(drop)
            .map_err(|why| format!("{why}\nserver log:\n{}", self.log()))
    }

    /// Stops the server, as a database outage would; [`Postgres::start_again`] ends it.
    pub fn stop(&self) {
        let data = self.data();
        self.run_as_postgres("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run_as_postgres(&self, program: &str, args: &[&str]) -> Output {
        run(&mut self.as_postgres(program, args))
    }

    /// `program` from PostgreSQL's binaries with `args`, as the `postgres` account when
    /// this runs as root, in the server's namespace if it has one.
    fn as_postgres(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut cmd = match (&self.netns, is_root()) {
            (Some(ns), _) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"])
                    .arg(&program);
                cmd
            }
            (None, true) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", "postgres", "--"]).arg(&program);
                cmd
            }
            (None, false) => Command::new(&program),
        };
        cmd.args(args).current_dir(self.dir.path());
        cmd
    }

    /// A URL for `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://ingot@{}:{}/{database}", self.listen, self.port)
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) {
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
    }

    /// Runs one SQL statement in `database` and returns what `psql` printed (unaligned,
    /// tuples only).
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let port = self.port.to_string();
        // In a namespace, through the unix socket: it works while the network is cut.
        let host = match self.netns {
            Some(_) => self.dir.path().display().to_string(),
            None => "127.0.0.1".to_owned(),
        };
        let out = run(Command::new(self.bin.join("psql")).args([
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "ingot",
            "-d",
            database,
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The directory of the server's unix socket (`host` for a client that connects
    /// through it).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the server's log is.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

fn run(cmd: &mut Command) -> Output {
    try_run(cmd).unwrap_or_else(|why| panic!("{why}"))
}

/// Runs `cmd`; its output, or what it said when it failed.
fn try_run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&program);
            cmd
        } else {
            Command::new(&program)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}
