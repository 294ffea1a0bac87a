//! Which Chromium build runs a session, and where each one is installed.
//!
//! Two engines: Debian's `chromium-headless-shell` (the lean headless shell, the default when
//! installed) and its full `chromium`, which runs headless sessions with `--headless=new` and
//! headful ones (`headless: false`) on a virtual display of their own (`Xvfb`). Owns the
//! choice of executable and mode flags per launch and the memory each engine's idle session
//! is budgeted; finding the executables is [`super::detect`]'s. It must not start anything.

use std::path::{Path, PathBuf};

use super::detect::{find_chromium, find_shell, find_xvfb};
use super::error::ChromiumNotFound;

/// A Chromium build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// `chromium-headless-shell`: headless only, about half the memory of full Chromium.
    Shell,
    /// Full Chromium: `--headless=new`, or headful on its own `Xvfb`.
    Chromium,
}

impl Engine {
    /// The word `--engine`, `/healthz` and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Shell => "shell",
            Engine::Chromium => "chromium",
        }
    }

    /// The flags that make this engine run headless (the shell is nothing else).
    pub fn headless_flags(self) -> &'static [&'static str] {
        match self {
            Engine::Shell => &[],
            Engine::Chromium => &["--headless=new"],
        }
    }

    /// Memory budgeted per idle session when the session limit is derived from the
    /// machine's memory. Measured through ingot (10 idle sessions on `about:blank`, whole
    /// process trees, this repository's BENCHMARKS.md): about 79 MiB PSS for the shell and
    /// 141 MiB for full Chromium. The budget is about 1.8 times that, for pages that do more.
    pub fn memory_per_session(self) -> u64 {
        match self {
            Engine::Shell => 144 << 20,
            Engine::Chromium => 256 << 20,
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Engine {
    type Err = UnknownEngine;

    fn from_str(s: &str) -> Result<Engine, UnknownEngine> {
        match s {
            "shell" => Ok(Engine::Shell),
            "chromium" => Ok(Engine::Chromium),
            other => Err(UnknownEngine(other.to_owned())),
        }
    }
}

/// How one browser runs: headless on an engine, or headful (full Chromium on a display).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Headless(Engine),
    Headful,
}

impl Mode {
    /// Every mode, in [`Mode::index`] order.
    pub(super) const COUNT: usize = 3;

    /// The engine that runs it.
    pub(super) fn engine(self) -> Engine {
        match self {
            Mode::Headless(engine) => engine,
            Mode::Headful => Engine::Chromium,
        }
    }

    /// A dense index, for what is learned per mode (the window's frame).
    pub(super) fn index(self) -> usize {
        match self {
            Mode::Headless(Engine::Shell) => 0,
            Mode::Headless(Engine::Chromium) => 1,
            Mode::Headful => 2,
        }
    }

    /// The flags that set the mode.
    pub(super) fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::Headless(engine) => engine.headless_flags(),
            // The window at the display's corner; it is taller than the display by its
            // toolbar, as a headless one is, so that the page has the session's size.
            Mode::Headful => &["--window-position=0,0"],
        }
    }

    /// The word for logs.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Mode::Headless(Engine::Shell) => "shell",
            Mode::Headless(Engine::Chromium) => "chromium",
            Mode::Headful => "headful",
        }
    }
}

/// An `--engine` that is neither `shell` nor `chromium`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown engine {0:?}: use shell or chromium")]
pub struct UnknownEngine(pub String);

/// What the flags ask for; `None` is "find it".
#[derive(Debug, Clone, Default)]
pub struct EngineFlags {
    /// `--engine`.
    pub engine: Option<Engine>,
    /// `--chromium`: the full browser.
    pub chromium: Option<PathBuf>,
    /// `--chromium-shell`: the headless shell.
    pub shell: Option<PathBuf>,
    /// `--xvfb`: the X server of headful sessions.
    pub xvfb: Option<PathBuf>,
}

/// The executables this gateway runs, found once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engines {
    /// The engine of headless sessions.
    pub default: Engine,
    /// Full Chromium, when installed.
    pub chromium: Option<PathBuf>,
    /// The headless shell, when installed.
    pub shell: Option<PathBuf>,
    /// `Xvfb`, when installed: headful sessions need it and full Chromium.
    pub xvfb: Option<PathBuf>,
}

/// Why the engines cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A path flag names something that is not an executable file.
    #[error("--{flag} {} is not an executable file", path.display())]
    NotExecutable {
        /// The flag, without its dashes.
        flag: &'static str,
        /// What it names.
        path: PathBuf,
    },
    /// `--engine` names an engine that is not installed.
    #[error("--engine {engine}: {}", missing(*.engine))]
    Missing {
        /// The engine asked for.
        engine: Engine,
    },
    /// Neither engine is installed.
    #[error(
        "no Chromium found (looked for /usr/lib/chromium/chromium-headless-shell, \
         /usr/lib/chromium/chromium, /usr/bin/chromium, chromium-browser and google-chrome). \
         Install Debian's packages with `apt-get install -y chromium-headless-shell chromium`, \
         or pass --chromium-shell PATH or --chromium PATH."
    )]
    Nowhere,
}

fn missing(engine: Engine) -> &'static str {
    match engine {
        Engine::Shell => {
            "no headless shell found (looked for /usr/lib/chromium/chromium-headless-shell and \
             chromium-headless-shell on PATH). Install it with `apt-get install -y \
             chromium-headless-shell`, or pass --chromium-shell PATH."
        }
        Engine::Chromium => {
            "no Chromium found (looked for /usr/lib/chromium/chromium, /usr/bin/chromium, \
             chromium-browser and google-chrome). Install it with `apt-get install -y \
             chromium`, or pass --chromium PATH."
        }
    }
}

impl Engines {
    /// Finds every executable the flags do not name, and picks the default engine: the
    /// shell when it is found, else full Chromium. Blocking: it looks at the file system.
    pub fn detect(flags: &EngineFlags) -> Result<Engines, EngineError> {
        let chromium = optional(find_chromium(flags.chromium.as_deref()), "chromium")?;
        let shell = optional(find_shell(flags.shell.as_deref()), "chromium-shell")?;
        let xvfb = optional(find_xvfb(flags.xvfb.as_deref()), "xvfb")?;
        Engines::choose(flags.engine, chromium, shell, xvfb)
    }

    /// The default engine of what was found: `asked` when given (and installed), else the
    /// shell when there is one, else full Chromium.
    pub fn choose(
        asked: Option<Engine>,
        chromium: Option<PathBuf>,
        shell: Option<PathBuf>,
        xvfb: Option<PathBuf>,
    ) -> Result<Engines, EngineError> {
        let default = match asked {
            Some(Engine::Shell) if shell.is_none() => {
                return Err(EngineError::Missing {
                    engine: Engine::Shell,
                });
            }
            Some(Engine::Chromium) if chromium.is_none() => {
                return Err(EngineError::Missing {
                    engine: Engine::Chromium,
                });
            }
            Some(engine) => engine,
            None if shell.is_some() => Engine::Shell,
            None if chromium.is_some() => Engine::Chromium,
            None => return Err(EngineError::Nowhere),
        };
        Ok(Engines {
            default,
            chromium,
            shell,
            xvfb,
        })
    }

    /// Only `executable`, as the default engine: for tests and tools.
    pub fn only(engine: Engine, executable: PathBuf) -> Engines {
        let (chromium, shell) = match engine {
            Engine::Shell => (None, Some(executable)),
            Engine::Chromium => (Some(executable), None),
        };
        Engines {
            default: engine,
            chromium,
            shell,
            xvfb: None,
        }
    }

    /// The executable of `engine`, when installed.
    pub fn executable(&self, engine: Engine) -> Option<&Path> {
        match engine {
            Engine::Shell => self.shell.as_deref(),
            Engine::Chromium => self.chromium.as_deref(),
        }
    }

    /// How a browser for a launch that is `headful` or not runs here.
    pub(super) fn mode(&self, headful: bool) -> Mode {
        if headful {
            Mode::Headful
        } else {
            Mode::Headless(self.default)
        }
    }

    /// The default engine's executable.
    pub fn default_executable(&self) -> &Path {
        // `choose` never makes an `Engines` whose default is not installed.
        self.executable(self.default)
            .or(self.chromium.as_deref())
            .or(self.shell.as_deref())
            .unwrap_or(Path::new("chromium"))
    }

    /// Whether headful sessions can run: full Chromium and `Xvfb` are both installed.
    pub fn headful(&self) -> bool {
        self.chromium.is_some() && self.xvfb.is_some()
    }

    /// What headful sessions lack, as an install hint; `None` when they can run.
    pub fn headful_missing(&self) -> Option<String> {
        let mut packages = Vec::new();
        if self.chromium.is_none() {
            packages.push("chromium");
        }
        if self.xvfb.is_none() {
            packages.push("xvfb");
        }
        (!packages.is_empty()).then(|| {
            format!(
                "headless: false needs full Chromium on a virtual display, and this node lacks \
                 {}: install with `apt-get install -y {}`",
                packages.join(" and "),
                packages.join(" ")
            )
        })
    }
}

/// A found executable, `None` for one that is not installed, or the error of a flag that
/// names something unusable.
fn optional(
    found: Result<PathBuf, ChromiumNotFound>,
    flag: &'static str,
) -> Result<Option<PathBuf>, EngineError> {
    match found {
        Ok(path) => Ok(Some(path)),
        Err(ChromiumNotFound::Nowhere) => Ok(None),
        Err(ChromiumNotFound::NotExecutable(path)) => {
            Err(EngineError::NotExecutable { flag, path })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<PathBuf> {
        Some(PathBuf::from(s))
    }

    #[test]
    fn the_shell_is_the_default_when_installed() {
        let both = Engines::choose(None, p("/c"), p("/s"), None).unwrap();
        assert_eq!(both.default, Engine::Shell);
        assert_eq!(both.default_executable(), Path::new("/s"));
        let only_full = Engines::choose(None, p("/c"), None, None).unwrap();
        assert_eq!(only_full.default, Engine::Chromium);
        let asked = Engines::choose(Some(Engine::Chromium), p("/c"), p("/s"), None).unwrap();
        assert_eq!(asked.default, Engine::Chromium);
        assert_eq!(asked.default_executable(), Path::new("/c"));
    }

    #[test]
    fn an_engine_that_is_not_installed_says_how_to_install_it() {
        let err = Engines::choose(Some(Engine::Shell), p("/c"), None, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("apt-get install -y chromium-headless-shell"),
            "{err}"
        );
        let err = Engines::choose(Some(Engine::Chromium), None, p("/s"), None).unwrap_err();
        assert!(
            err.to_string().contains("apt-get install -y chromium`"),
            "{err}"
        );
        let err = Engines::choose(None, None, None, None).unwrap_err();
        assert!(matches!(err, EngineError::Nowhere), "{err}");
    }

    #[test]
    fn headful_needs_full_chromium_and_xvfb() {
        let none = Engines::choose(None, None, p("/s"), None).unwrap();
        assert!(!none.headful());
        let hint = none.headful_missing().unwrap();
        assert!(hint.contains("apt-get install -y chromium xvfb"), "{hint}");
        let all = Engines::choose(None, p("/c"), p("/s"), p("/x")).unwrap();
        assert!(all.headful());
        assert_eq!(all.headful_missing(), None);
    }

    #[test]
    fn engines_parse_from_their_words_only() {
        assert_eq!("shell".parse(), Ok(Engine::Shell));
        assert_eq!("chromium".parse(), Ok(Engine::Chromium));
        assert!("Shell".parse::<Engine>().is_err());
        for e in [Engine::Shell, Engine::Chromium] {
            assert_eq!(e.as_str().parse(), Ok(e));
        }
        assert!(Engine::Shell.memory_per_session() < Engine::Chromium.memory_per_session());
    }
}
