//! Why a browser could not be launched or prepared, as types: [`LaunchError`] and the
//! errors it wraps ([`NotReady`], [`DiskError`], [`SandboxError`], [`StartupError`],
//! [`ChromiumNotFound`]).
//!
//! Owns the messages these errors show (the API passes a launch failure's text on to the
//! client, and start-up prints the others), not the decisions behind them. Must not know
//! about sessions or HTTP.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::cgroup::CgroupError;
use super::{BrowserExit, UidRange};

/// Why a browser could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The disks the browser's directories live on cannot take a session.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A headful browser was asked of a host without full Chromium or `Xvfb`.
    #[error("{0}")]
    HeadfulUnavailable(String),
    /// The browser's directories could not be created.
    #[error("cannot create session directory: {0}")]
    Directory(#[source] io::Error),
    /// The browser's cgroup (its memory and task caps) could not be made.
    #[error("cannot make the browser's cgroup for its memory and task caps: {0}")]
    Cgroup(#[from] CgroupError),
    /// The browser's user or Landlock ruleset could not be set up.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The browser's egress forwarder could not be started.
    #[error("cannot start the proxy forwarder: {0}")]
    Forwarder(#[source] io::Error),
    /// Its CDP pipes could not be made.
    #[error("{what}: {source}")]
    Pipe {
        /// What failed.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The executable could not be run (`fork`/`exec`, or the child's set-up before exec).
    #[error("cannot run {}: {source}", executable.display())]
    Spawn {
        /// What was run.
        executable: PathBuf,
        /// The error (an errno, for a failure in the child before exec).
        #[source]
        source: io::Error,
    },
    /// The process was gone before its pid could be read.
    #[error("Chromium exited during spawn")]
    ExitedDuringSpawn,
    /// It ran but never became ready; it is killed. `last_output` is the tail of its
    /// stderr (empty when it said nothing).
    #[error("Chromium did not start: {reason}{}", last_words(last_output))]
    NotReady {
        /// Why it does not count as ready.
        reason: NotReady,
        /// Its last lines of output, joined with ` | `.
        last_output: String,
    },
    /// A pooled browser's downloads directory could not follow it to its session.
    #[error("cannot move the browser's downloads from {} to {}: {source}", from.display(), to.display())]
    MoveDownloads {
        /// Where they were.
        from: PathBuf,
        /// Where they had to go.
        to: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A blocking step of the launch panicked or was cancelled.
    #[error("{what}: {source}")]
    Worker {
        /// What that step was doing.
        what: &'static str,
        /// The error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A headful browser's virtual display (Xvfb) could not be started.
    #[error("cannot start the browser's virtual display: {0}")]
    Display(#[from] DisplayError),
    /// A host that is not a real one (a test's) refused, with its own words.
    #[error("{0}")]
    Refused(String),
}

/// `; its last output: …`, or nothing without output.
fn last_words(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; its last output: {output}")
    }
}

/// Why a started browser does not count as ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// It exited before answering.
    #[error("it exited ({0}) before answering")]
    Exited(BrowserExit),
    /// The CDP pipe would not take its first command, and it did not exit.
    #[error("the CDP pipe closed at once")]
    PipeClosedAtOnce,
    /// The CDP pipe closed before the first answer, and it did not exit.
    #[error("its CDP pipe closed before it answered")]
    PipeClosed,
    /// No answer in time.
    #[error("no answer to its first CDP command within {}s", .0.as_secs())]
    Timeout(Duration),
    /// Its answer to a first command makes it unusable.
    #[error(transparent)]
    Reply(#[from] StartupError),
}

/// A first CDP reply that makes the browser unusable.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The reply is not JSON.
    #[error("its first CDP reply is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// It answered one of the first commands with an error.
    #[error("it refused one of its first CDP commands (id {id}): {error}")]
    Refused {
        /// The command's id.
        id: u64,
        /// The CDP error object.
        error: Value,
    },
}

/// A disk a browser's directories would live on cannot take a session.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The directory cannot be created or examined.
    #[error("cannot use the session directory {}: {source}", dir.display())]
    Unusable {
        /// The directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The directory is on a read-only file system.
    #[error("cannot use the session directory {}: it is on a read-only file system", dir.display())]
    ReadOnly {
        /// The directory.
        dir: PathBuf,
    },
    /// Too little space or no inodes left.
    #[error(
        "not enough free disk space in {}: {free_mib} MiB and {inodes} inodes free, sessions need at least {need_mib} MiB",
        dir.display()
    )]
    Full {
        /// The directory.
        dir: PathBuf,
        /// Free space, in MiB.
        free_mib: u64,
        /// Free inodes.
        inodes: u64,
        /// What a session needs, in MiB.
        need_mib: u64,
    },
}

/// The sandbox could not be set up for one browser.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Every id of the range is taken.
    #[error("every user id of --browser-uids {0} is in use by a browser; widen the range")]
    UidsExhausted(UidRange),
    /// The Landlock ruleset could not be built.
    #[error("cannot build the Landlock ruleset: {0}")]
    Landlock(#[from] ::landlock::RulesetError),
}

/// A headful browser's Xvfb could not be started; nothing of it is left running.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// Its directory, cookie or log could not be made.
    #[error("cannot prepare its directory {}: {source}", dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Its readiness pipe could not be made or read.
    #[error("cannot make its readiness pipe: {0}")]
    Pipe(#[source] io::Error),
    /// Xvfb could not be run (`fork`/`exec`, or the child's set-up before exec).
    #[error("cannot run {}: {source}", executable.display())]
    Spawn {
        /// What was run.
        executable: PathBuf,
        /// The error (an errno, for a failure in the child before exec).
        #[source]
        source: io::Error,
    },
    /// The process was gone before its pid could be read.
    #[error("Xvfb exited during spawn")]
    ExitedDuringSpawn,
    /// It exited before accepting clients.
    #[error(
        "Xvfb exited ({exit}) before accepting clients{}",
        last_words(last_output)
    )]
    Exited {
        /// How it ended.
        exit: BrowserExit,
        /// Its last lines of output, joined with ` | `.
        last_output: String,
    },
    /// It did not accept clients in time; it is killed.
    #[error("Xvfb did not accept clients within {}s{}", after.as_secs(), last_words(last_output))]
    Timeout {
        /// How long it had.
        after: Duration,
        /// Its last lines of output, joined with ` | `.
        last_output: String,
    },
    /// It let in a client without its cookie (it could not read its `-auth` file?); it is
    /// killed rather than served open to every local process.
    #[error("Xvfb let in a client without its cookie{}", last_words(last_output))]
    Open {
        /// Its last lines of output, joined with ` | `.
        last_output: String,
    },
    /// Its socket could not be checked.
    #[error("cannot check Xvfb's socket: {0}")]
    Check(#[source] io::Error),
    /// Preparing its directory panicked or was cancelled.
    #[error("preparing its directory: {0}")]
    Worker(#[source] tokio::task::JoinError),
}

/// No Chromium to run.
#[derive(Debug, thiserror::Error)]
pub enum ChromiumNotFound {
    /// `--chromium` names something that is not an executable file.
    #[error("--chromium {} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
    /// None of the known places holds one.
    #[error(
        "no Chromium found (looked for /usr/lib/chromium/chromium, /usr/bin/chromium, chromium-browser and \
         google-chrome). Install Debian's package with `apt-get install -y chromium`, or pass --chromium PATH."
    )]
    Nowhere,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts clients and operators read are the ones the string errors had.
    #[test]
    fn messages_read_as_before() {
        let not_ready = |last_output: &str| LaunchError::NotReady {
            reason: NotReady::Exited(BrowserExit::Code(1)),
            last_output: last_output.into(),
        };
        assert_eq!(
            not_ready("").to_string(),
            "Chromium did not start: it exited (exit status 1) before answering"
        );
        assert_eq!(
            not_ready("a | b").to_string(),
            "Chromium did not start: it exited (exit status 1) before answering; its last output: a | b"
        );
        let timeout = NotReady::Timeout(Duration::from_secs(30));
        assert_eq!(
            timeout.to_string(),
            "no answer to its first CDP command within 30s"
        );
        let full = DiskError::Full {
            dir: "/d".into(),
            free_mib: 3,
            inodes: 9,
            need_mib: 64,
        };
        assert_eq!(
            LaunchError::from(full).to_string(),
            "not enough free disk space in /d: 3 MiB and 9 inodes free, sessions need at least 64 MiB"
        );
        let spawn = LaunchError::Spawn {
            executable: "/x/chrome".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(
            spawn.to_string().starts_with("cannot run /x/chrome: "),
            "{spawn}"
        );
        let range = UidRange { first: 5, last: 6 };
        assert_eq!(
            LaunchError::from(SandboxError::UidsExhausted(range)).to_string(),
            "every user id of --browser-uids 5-6 is in use by a browser; widen the range"
        );
    }

    /// A failure keeps its cause as a source, for whoever walks the chain.
    #[test]
    fn causes_are_sources() {
        use std::error::Error as _;
        let spawn = LaunchError::Spawn {
            executable: "/x".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        let source = spawn.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(source.and_then(io::Error::raw_os_error), Some(libc::EACCES));
    }
}
