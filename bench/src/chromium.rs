//! Direct Chromium, the baseline: a browser launched the way a client would launch it
//! itself, with its DevTools WebSocket on a TCP port; and the benchmark's temporary
//! directory.
//!
//! Owns launching (flags, profile directory, process group), finding the DevTools URL
//! (`DevToolsActivePort`), and tearing down: [`DirectChromium`] and [`TempRoot`] clean up in
//! `Drop`, so every exit path, errors and panics included, leaves no browser and no
//! directory behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::procfs;

/// Which build of Chromium a browser is: the lean headless shell (`chromium-headless-shell`,
/// headless by construction, so it gets no `--headless` flag) or the full browser (given
/// `--headless=new` when headless).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Shell,
    Chromium,
}

impl Engine {
    /// Both, in the order of every `[_; 2]` indexed by engine.
    pub(crate) const ALL: [Engine; 2] = [Engine::Shell, Engine::Chromium];

    /// ingot's name for it (`--engine shell|chromium`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Engine::Shell => "shell",
            Engine::Chromium => "chromium",
        }
    }

    /// Its index in [`Engine::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            Engine::Shell => 0,
            Engine::Chromium => 1,
        }
    }
}

/// What a direct launch runs: an executable, launched as its engine is.
#[derive(Debug, Clone)]
pub(crate) struct Build {
    pub executable: PathBuf,
    pub engine: Engine,
}

impl Build {
    /// For people: `the headless shell (`/usr/lib/…`)`.
    pub(crate) fn describe(&self) -> String {
        let what = match self.engine {
            Engine::Shell => "the headless shell",
            Engine::Chromium => "the full Chromium",
        };
        format!("{what} (`{}`)", self.executable.display())
    }
}

/// Exactly the flags ingot gives its headless browsers, with a TCP DevTools port instead of a
/// pipe: the full browser with `--headless=new`, the shell without any `--headless` flag.
fn flags(engine: Engine) -> impl Iterator<Item = &'static str> {
    let headless: &[&'static str] = match engine {
        Engine::Shell => &[],
        Engine::Chromium => &["--headless=new"],
    };
    ingot::browser::BASE_FLAGS
        .iter()
        .copied()
        .filter(|f| *f != "--remote-debugging-pipe" && !f.starts_with("--headless"))
        .chain(headless.iter().copied())
        .chain(["--window-size=1920,1080", "--remote-debugging-port=0"])
}

/// How often `DevToolsActivePort` is looked for while a browser starts.
const PORT_POLL: Duration = Duration::from_millis(2);

/// The benchmark's own temporary directory. Dropping it kills any process still naming it
/// (a last resort: the guards inside it should have done so) and removes it.
pub(crate) struct TempRoot {
    path: PathBuf,
}

impl TempRoot {
    pub(crate) fn create() -> Result<TempRoot> {
        let path =
            std::env::temp_dir().join(format!("ingot-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempRoot { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty directory inside the root with a unique name starting with `prefix`.
    pub(crate) fn fresh_dir(&self, prefix: &str) -> Result<PathBuf> {
        let dir = self
            .path
            .join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let stray = procfs::kill_mentioning(&self.path.to_string_lossy());
        if stray > 0 {
            eprintln!(
                "cleanup: killed {stray} stray process(es) naming {}",
                self.path.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("cleanup: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// A directly launched Chromium in its own process group. Dropping it SIGKILLs the group
/// (and any crash handler naming its profile) and removes the profile.
pub(crate) struct DirectChromium {
    child: Child,
    pgid: i32,
    dir: PathBuf,
}

impl DirectChromium {
    /// Starts the full Chromium (`--headless=new`) with a fresh profile at `dir` (which this
    /// guard then owns) and returns at once; [`DirectChromium::devtools_url`] waits for it to
    /// listen.
    pub(crate) fn spawn(executable: &Path, dir: PathBuf) -> Result<DirectChromium> {
        DirectChromium::spawn_engine(executable, Engine::Chromium, dir)
    }

    /// [`DirectChromium::spawn`] for either engine: `executable` is that engine's build.
    pub(crate) fn spawn_engine(
        executable: &Path,
        engine: Engine,
        dir: PathBuf,
    ) -> Result<DirectChromium> {
        use std::os::unix::process::CommandExt;
        let child = Command::new(executable)
            .args(flags(engine))
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e).with_context(|| format!("cannot start {}", executable.display()));
            }
        };
        let pgid = child.id() as i32;
        Ok(DirectChromium { child, pgid, dir })
    }

    /// The browser process's pid (the leader of its process group).
    pub(crate) fn pid(&self) -> i32 {
        self.pgid
    }

    /// Every process of this browser, crash handlers included.
    pub(crate) fn processes(&self) -> Vec<i32> {
        let groups = std::iter::once(self.pgid).collect();
        procfs::browser_processes(&groups, &self.dir, std::process::id() as i32)
    }

    /// Waits until `DevToolsActivePort` is written and returns the browser WebSocket URL.
    pub(crate) async fn devtools_url(&mut self, timeout: Duration) -> Result<String> {
        let file = self.dir.join("DevToolsActivePort");
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(url) = parse_active_port(&text)
            {
                return Ok(url);
            }
            if let Some(status) = self.child.try_wait().context("cannot poll Chromium")? {
                bail!("Chromium exited before listening: {status}");
            }
            if started.elapsed() > timeout {
                bail!(
                    "Chromium did not write {} within {timeout:?}",
                    file.display()
                );
            }
            tokio::time::sleep(PORT_POLL).await;
        }
    }
}

/// `DevToolsActivePort` holds the port on line 1 and the browser path on line 2; `None` while
/// it is incomplete.
fn parse_active_port(text: &str) -> Option<String> {
    let mut lines = text.lines();
    let port: u16 = lines.next()?.trim().parse().ok()?;
    let path = lines.next()?.trim();
    // A UUID completes the path; a shorter one is still being written.
    let id = path.strip_prefix("/devtools/browser/")?;
    (id.len() == 36).then(|| format!("ws://127.0.0.1:{port}{path}"))
}

impl Drop for DirectChromium {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while procfs::group_alive(self.pgid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        procfs::kill_mentioning(&self.dir.to_string_lossy());
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cleanup: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// The version line of a Chromium executable (`Chromium 156.0…`).
pub(crate) fn version(executable: &Path) -> String {
    Command::new(executable)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::{Engine, flags, parse_active_port};

    #[test]
    fn only_the_full_browser_gets_headless_new() {
        let shell: Vec<&str> = flags(Engine::Shell).collect();
        assert!(
            !shell.iter().any(|f| f.starts_with("--headless")),
            "{shell:?}"
        );
        let full: Vec<&str> = flags(Engine::Chromium).collect();
        assert_eq!(
            full.iter().filter(|f| f.starts_with("--headless")).count(),
            1,
            "{full:?}"
        );
        assert!(full.contains(&"--headless=new"), "{full:?}");
        for f in [&shell, &full] {
            assert!(f.contains(&"--remote-debugging-port=0"), "{f:?}");
            assert!(!f.contains(&"--remote-debugging-pipe"), "{f:?}");
            assert!(f.contains(&"--disable-background-networking"), "{f:?}");
        }
    }

    #[test]
    fn active_port_needs_both_lines() {
        assert_eq!(parse_active_port(""), None);
        assert_eq!(parse_active_port("9222\n"), None);
        assert_eq!(parse_active_port("9222\n/devtools/browser/7a6b"), None);
        assert_eq!(
            parse_active_port("9222\n/devtools/browser/7a6b19a4-dc66-4e39-84ad-9a0bdc81b36a"),
            Some(
                "ws://127.0.0.1:9222/devtools/browser/7a6b19a4-dc66-4e39-84ad-9a0bdc81b36a".into()
            )
        );
    }
}
