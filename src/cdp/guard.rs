//! The CDP guard: what one session's CDP traffic may do to the host, and how much of the
//! gateway it may take. The multiplexer asks it about every client command whose method is
//! on the list below (the method is already read to route the command, so any other command
//! costs one `match` on its name and nothing more), and tells it about the targets and
//! downloads the gateway's own root session watches.
//!
//! | method | rule |
//! |---|---|
//! | `Browser.setDownloadBehavior`, `Page.setDownloadBehavior` | `downloadPath` is rewritten to the session's files directory (added when absent); `default`, which hands the choice back to Chromium (the browser user's home), becomes `allow` there; `deny`, `browserContextId` and `eventsEnabled` are kept |
//! | `DOM.setFileInputFiles` (`files`), `Input.dispatchDragEvent` (`data.files`), `PWA.launchFilesInApp` (`files`) | every path must resolve, symlinks and `..` followed, inside the session's files directory; a relative name is taken relative to it; the browser gets the resolved absolute path. Otherwise a CDP error naming the rule |
//! | `Page.navigate`, `Target.createTarget` (`url`), `Network.loadNetworkResource` (`url`), `PWA.install` (`installUrlOrBundleUrl`) | `file:` URLs (also behind `view-source:` and `filesystem:`) are refused: they read host files outside any session |
//! | `Extensions.loadUnpacked` | refused: it loads code from a host path with more power than a page |
//! | `Target.exposeDevToolsProtocol` | refused: it hands a page a CDP connection of its own, past this guard |
//! | `Target.createBrowserContext` | a `proxyServer` of its own is refused: the context's traffic would bypass the egress forwarder |
//! | `Target.sendMessageToTarget` | the command it carries (to a session attached without `flatten`) is refused when its method is on this list |
//!
//! A command on the list that the guard cannot read as JSON is refused, and one it lets pass
//! is forwarded as the guard read it (re-serialized), so that Chromium never parses a
//! command other than the one checked.
//! | `Target.createTarget` | refused once the session has `--max-pages-per-session` pages (open, or being created) |
//!
//! Methods that take no host path pass untouched (among them `Page.setInterceptFileChooserDialog`,
//! `Extensions.uninstall`, `Tracing.*`, `Storage.*`, `IO.*`; checked against Chromium's
//! `browser_protocol.pdl` at r1684464). Pages the page itself opens beyond the page cap are
//! closed (`Target.closeTarget`), and a page's download larger than `--max-file-bytes` is
//! cancelled (`Browser.cancelDownload`) and whatever it left in the files directory removed.
//!
//! The guard also keeps the per-session budgets: CDP clients on this node, and the bytes of
//! client messages received and not yet written into the browser's pipe (a byte semaphore:
//! a client waits, and is not read, while the budget is spent; one message larger than the
//! budget takes all of it). A frame still being read is not counted: each client's is bounded
//! by `--max-message-bytes`.
//!
//! It must not know about WebSockets, HTTP or session states, and routes nothing itself: it
//! answers the multiplexer, which sends what it decides.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::sync::lock;

/// The caps on one session's CDP traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// CDP clients at once (`--max-clients-per-session`).
    pub max_clients: usize,
    /// Pages open at once (`--max-pages-per-session`).
    pub max_pages: usize,
    /// Bytes of client messages held for the browser at once (`--session-inflight-bytes`).
    pub inflight_bytes: usize,
    /// Largest download a page may make (`--max-file-bytes`).
    pub max_file_bytes: u64,
    /// Most bytes the session's downloads may take together (`--max-session-files-bytes`;
    /// uploads are counted against it by the files API).
    pub max_session_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_clients: 32,
            max_pages: 50,
            inflight_bytes: 64 << 20,
            max_file_bytes: 100 << 20,
            max_session_bytes: 1 << 30,
        }
    }
}

/// What the guard does with a command whose method is on its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// `*.setDownloadBehavior`: the download directory is the session's.
    Downloads,
    /// Host paths, at `params.files` or (drag data) `params.data.files`.
    Paths { drag: bool },
    /// A URL that must not be `file:`, in this parameter.
    NoFileUrl(&'static str),
    /// `Target.createTarget`: the page cap and the `url` rule.
    NewPage,
    /// `Target.sendMessageToTarget`: a command inside it (a session attached without
    /// `flatten`) may not be one the guard checks.
    Nested,
    /// `Target.createBrowserContext`: no proxy of its own, which would take the context's
    /// traffic past the gateway's egress forwarder.
    NoOwnProxy,
    /// Never forwarded.
    Refused,
}

/// The rule for `method`, if it has one. A `match` on the name: this is what every other
/// command costs.
pub(crate) fn rule(method: &str) -> Option<Rule> {
    Some(match method {
        "Browser.setDownloadBehavior" | "Page.setDownloadBehavior" => Rule::Downloads,
        "DOM.setFileInputFiles" | "PWA.launchFilesInApp" => Rule::Paths { drag: false },
        "Input.dispatchDragEvent" => Rule::Paths { drag: true },
        "Page.navigate" | "Network.loadNetworkResource" => Rule::NoFileUrl("url"),
        "PWA.install" => Rule::NoFileUrl("installUrlOrBundleUrl"),
        "Target.createTarget" => Rule::NewPage,
        "Target.createBrowserContext" => Rule::NoOwnProxy,
        "Target.sendMessageToTarget" => Rule::Nested,
        "Extensions.loadUnpacked" | "Target.exposeDevToolsProtocol" => Rule::Refused,
        _ => return None,
    })
}

/// The guard's answer about one command.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Forward it as it is.
    Pass,
    /// Forward this instead.
    Rewrite(Bytes),
    /// Answer the client with a CDP error carrying this message.
    Refuse(String),
}

/// Why a client could not be counted in.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "this session has {0} CDP clients, the most --max-clients-per-session allows; close one first"
)]
pub struct TooManyClients(pub usize);

/// One session's guard.
pub(crate) struct Guard {
    /// The session it guards, for logs.
    session_id: Option<uuid::Uuid>,
    limits: Limits,
    /// The session's files directory; `None` for a browser without one (path methods are
    /// then refused).
    files: Option<PathBuf>,
    clients: AtomicUsize,
    inflight: Arc<Semaphore>,
    pages: Mutex<Pages>,
    downloads: Mutex<Downloads>,
}

/// The pages of the session, as the gateway's root session sees them.
#[derive(Default)]
struct Pages {
    open: HashSet<Box<str>>,
    /// Admitted `Target.createTarget` commands not answered yet.
    creating: usize,
    /// Browser contexts seen on pages (downloads are cancelled in each).
    contexts: HashSet<Box<str>>,
}

/// Downloads under way, by guid.
#[derive(Default)]
struct Downloads {
    names: HashMap<Box<str>, Box<str>>,
    cancelled: HashSet<Box<str>>,
    /// Bytes of the session's finished downloads.
    finished: u64,
    /// Bytes received so far by each download in progress.
    receiving: HashMap<Box<str>, u64>,
}

/// What the multiplexer must send or do after a root-session event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing.
    None,
    /// Send these commands (without `id`; the multiplexer numbers them).
    Send(Vec<Value>),
    /// Remove these files (partial or over-cap downloads), off the runtime.
    Remove(Vec<PathBuf>),
}

impl Guard {
    /// A guard with `limits` for a session whose files are in `files`.
    pub(crate) fn new(limits: Limits, files: Option<PathBuf>) -> Guard {
        let permits = limits.inflight_bytes.min(Semaphore::MAX_PERMITS);
        Guard {
            session_id: None,
            limits,
            files,
            clients: AtomicUsize::new(0),
            inflight: Arc::new(Semaphore::new(permits)),
            pages: Mutex::new(Pages::default()),
            downloads: Mutex::new(Downloads::default()),
        }
    }

    /// The same guard, naming session `id` in its logs.
    pub(crate) fn for_session(mut self, id: uuid::Uuid) -> Guard {
        self.session_id = Some(id);
        self
    }

    /// Counts one more CDP client in, unless the session has its most.
    pub(crate) fn client_in(&self) -> Result<(), TooManyClients> {
        let max = self.limits.max_clients;
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| TooManyClients(max))
    }

    /// Counts a client out again.
    pub(crate) fn client_out(&self) {
        let _ = self
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Waits until `len` bytes fit the session's in-flight budget; holding the permit keeps
    /// them counted. A message larger than the budget takes all of it.
    pub(crate) async fn inflight(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let want = len.clamp(1, self.limits.inflight_bytes);
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        self.inflight.clone().acquire_many_owned(want).await.ok()
    }

    /// Checks a command whose method has `rule`. A command the guard cannot read as JSON is
    /// refused, and one it lets pass is forwarded as the guard read it (re-serialized), so
    /// that the browser never sees a command other than the one checked.
    pub(crate) async fn check(&self, rule: Rule, method: &str, msg: &[u8]) -> Verdict {
        if rule == Rule::Refused {
            return Verdict::Refuse(refused(method));
        }
        let Ok(command) = serde_json::from_slice::<Value>(msg) else {
            return Verdict::Refuse(format!(
                "ingot: {method} refused: the gateway's guard cannot read this command as JSON"
            ));
        };
        let verdict = match rule {
            Rule::Refused => Verdict::Refuse(refused(method)),
            Rule::NoFileUrl(param) => no_file_url(method, param, &command),
            Rule::NoOwnProxy => no_own_proxy(method, &command),
            Rule::Nested => nested(method, &command),
            Rule::NewPage => match no_file_url(method, "url", &command) {
                Verdict::Pass => self.admit_page(),
                refused => refused,
            },
            Rule::Downloads => match &self.files {
                Some(dir) => {
                    info!(session_id = ?self.session_id, method, dir = %dir.display(),
                        "download directory set to the session's files");
                    return downloads_into(command, dir);
                }
                None => Verdict::Refuse(no_files_dir(method)),
            },
            Rule::Paths { drag } => match &self.files {
                Some(dir) => return confine_paths(method, command, dir.clone(), drag).await,
                None => Verdict::Refuse(no_files_dir(method)),
            },
        };
        match verdict {
            Verdict::Pass => Verdict::Rewrite(Bytes::from(command.to_string())),
            other => other,
        }
    }

    /// Admits one `Target.createTarget`, unless the session has its most pages.
    fn admit_page(&self) -> Verdict {
        let mut pages = lock(&self.pages);
        if pages.open.len() + pages.creating >= self.limits.max_pages {
            return Verdict::Refuse(format!(
                "ingot: Target.createTarget refused: this session has {} pages, the most \
                 --max-pages-per-session allows; close one first",
                self.limits.max_pages
            ));
        }
        pages.creating += 1;
        Verdict::Pass
    }

    /// A `Target.createTarget` that was admitted has its answer (or its client left).
    pub(crate) fn page_answered(&self) {
        let mut pages = lock(&self.pages);
        pages.creating = pages.creating.saturating_sub(1);
    }

    /// Handles an event on the gateway's root session: targets (`Target.setDiscoverTargets`)
    /// and downloads (`eventsEnabled`).
    pub(crate) fn root_event(&self, msg: &[u8]) -> Action {
        const CREATED: &[u8] = br#"{"method":"Target.targetCreated","#;
        const DESTROYED: &[u8] = br#"{"method":"Target.targetDestroyed","#;
        const BEGIN: &[u8] = br#"{"method":"Browser.downloadWillBegin","#;
        const PROGRESS: &[u8] = br#"{"method":"Browser.downloadProgress","#;
        if msg.starts_with(CREATED) {
            self.target_created(msg)
        } else if msg.starts_with(DESTROYED) {
            if let Some(Event { params }) = parse::<Destroyed>(msg) {
                lock(&self.pages).open.remove(params.target_id.as_str());
            }
            Action::None
        } else if msg.starts_with(BEGIN) {
            if let Some(Event { params }) = parse::<WillBegin>(msg) {
                let name: Box<str> = params.suggested_filename.into();
                lock(&self.downloads).names.insert(params.guid.into(), name);
            }
            Action::None
        } else if msg.starts_with(PROGRESS) {
            match parse::<Progress>(msg) {
                Some(Event { params }) => self.download_progress(params),
                None => Action::None,
            }
        } else {
            Action::None
        }
    }

    fn target_created(&self, msg: &[u8]) -> Action {
        let Some(Event { params }) = parse::<Created>(msg) else {
            return Action::None;
        };
        let info = params.target_info;
        if info.kind != "page" {
            return Action::None;
        }
        let mut pages = lock(&self.pages);
        if let Some(context) = info.browser_context_id {
            pages.contexts.insert(context.into());
        }
        pages.open.insert(info.target_id.as_str().into());
        if pages.open.len() <= self.limits.max_pages {
            return Action::None;
        }
        warn!(
            session_id = ?self.session_id,
            target = %info.target_id,
            max = self.limits.max_pages,
            "a page beyond --max-pages-per-session opened; closing it"
        );
        Action::Send(vec![
            json!({"method": "Target.closeTarget", "params": {"targetId": info.target_id}}),
        ])
    }

    fn download_progress(&self, p: ProgressParams) -> Action {
        let max = self.limits.max_file_bytes as f64;
        let mut downloads = lock(&self.downloads);
        // What the session's other downloads hold: finished ones, and those under way.
        let others: u64 = downloads
            .receiving
            .iter()
            .filter(|(guid, _)| ***guid != *p.guid.as_str())
            .map(|(_, bytes)| *bytes)
            .sum();
        let taken = downloads.finished.saturating_add(others);
        let room = self.limits.max_session_bytes.saturating_sub(taken) as f64;
        if p.state == "inProgress" {
            downloads
                .receiving
                .insert(p.guid.as_str().into(), p.received_bytes as u64);
        } else {
            downloads.receiving.remove(p.guid.as_str());
        }
        let over = p.received_bytes > max.min(room) || p.total_bytes > max.min(room);
        let cancelled = downloads.cancelled.contains(p.guid.as_str());
        match p.state.as_str() {
            "inProgress" if over && !cancelled => {
                downloads.cancelled.insert(p.guid.as_str().into());
                drop(downloads);
                info!(
                    session_id = ?self.session_id,
                    guid = %p.guid,
                    max = self.limits.max_file_bytes,
                    session_max = self.limits.max_session_bytes,
                    "a download is larger than --max-file-bytes or the room left under \
                     --max-session-files-bytes; cancelling it"
                );
                Action::Send(self.cancel_everywhere(&p.guid))
            }
            "inProgress" => Action::None,
            state => {
                let name = downloads.names.remove(p.guid.as_str());
                downloads.cancelled.remove(p.guid.as_str());
                if !(over || cancelled) {
                    if state == "completed" {
                        downloads.finished += p.received_bytes as u64;
                    }
                    return Action::None;
                }
                info!(session_id = ?self.session_id, guid = %p.guid, state, "removing what an over-size download left");
                Action::Remove(self.leftovers(&p.guid, name.as_deref(), p.file_path))
            }
        }
    }

    /// `Browser.cancelDownload` in the default browser context and every one pages used.
    fn cancel_everywhere(&self, guid: &str) -> Vec<Value> {
        let contexts: Vec<Box<str>> = lock(&self.pages).contexts.iter().cloned().collect();
        let mut commands =
            vec![json!({"method": "Browser.cancelDownload", "params": {"guid": guid}})];
        commands.extend(contexts.iter().map(|c| {
            json!({"method": "Browser.cancelDownload", "params": {"guid": guid, "browserContextId": c}})
        }));
        commands
    }

    /// The files an over-size download may have left in the files directory: its partial
    /// file under the suggested name or its guid, and the finished file Chromium reported.
    fn leftovers(&self, guid: &str, name: Option<&str>, done: Option<String>) -> Vec<PathBuf> {
        let Some(dir) = &self.files else {
            return Vec::new();
        };
        let mut paths = vec![dir.join(format!("{guid}.crdownload")), dir.join(guid)];
        if let Some(name) = name.filter(|n| plain_name(n)) {
            paths.push(dir.join(format!("{name}.crdownload")));
        }
        if let Some(done) = done.map(PathBuf::from)
            && done.parent() == Some(dir.as_path())
        {
            paths.push(done);
        }
        paths
    }
}

/// A single file name, with no directory part.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn no_files_dir(method: &str) -> String {
    format!("ingot: {method} is not available: this session has no files directory")
}

#[derive(Deserialize)]
struct Event<P> {
    params: P,
}

#[derive(Deserialize)]
struct Created {
    #[serde(rename = "targetInfo")]
    target_info: TargetInfo,
}

#[derive(Deserialize)]
struct TargetInfo {
    #[serde(rename = "targetId")]
    target_id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "browserContextId")]
    browser_context_id: Option<String>,
}

#[derive(Deserialize)]
struct Destroyed {
    #[serde(rename = "targetId")]
    target_id: String,
}

#[derive(Deserialize)]
struct WillBegin {
    guid: String,
    #[serde(rename = "suggestedFilename", default)]
    suggested_filename: String,
}

#[derive(Deserialize)]
struct ProgressParams {
    guid: String,
    #[serde(rename = "totalBytes", default)]
    total_bytes: f64,
    #[serde(rename = "receivedBytes", default)]
    received_bytes: f64,
    state: String,
    #[serde(rename = "filePath")]
    file_path: Option<String>,
}

type Progress = ProgressParams;

fn parse<'a, P: Deserialize<'a>>(msg: &'a [u8]) -> Option<Event<P>> {
    serde_json::from_slice(msg).ok()
}

/// Refuses a `file:` URL in `param`.
fn no_file_url(method: &str, param: &str, command: &Value) -> Verdict {
    match command["params"][param].as_str() {
        Some(url) if is_file_url(url) => Verdict::Refuse(format!(
            "ingot: {method} may not load file: URLs: they read files on the gateway's host. \
             Serve the file over HTTP, or upload it to this session's files"
        )),
        _ => Verdict::Pass,
    }
}

/// Why a method the guard never forwards is refused.
fn refused(method: &str) -> String {
    match method {
        "Target.exposeDevToolsProtocol" => format!(
            "ingot: {method} is not allowed: it would let a page send CDP commands to the \
             browser past the gateway's guard"
        ),
        _ => format!(
            "ingot: {method} is not allowed: it loads code from a path on the gateway's host"
        ),
    }
}

/// Refuses a browser context with a proxy of its own: every session's traffic goes through
/// the gateway's egress forwarder, which applies the egress policy.
fn no_own_proxy(method: &str, command: &Value) -> Verdict {
    match &command["params"]["proxyServer"] {
        Value::Null => Verdict::Pass,
        Value::String(s) if s.is_empty() => Verdict::Pass,
        _ => Verdict::Refuse(format!(
            "ingot: {method} may not set proxyServer: a session's traffic goes through the \
             gateway's egress proxy. Create the session with proxyUrl instead"
        )),
    }
}

/// Refuses a command sent inside `Target.sendMessageToTarget` (to a session attached without
/// `flatten`) when the guard would check it: the guard checks commands on flat sessions only.
fn nested(method: &str, command: &Value) -> Verdict {
    let inner = command["params"]["message"]
        .as_str()
        .and_then(|m| serde_json::from_str::<Value>(m).ok());
    let Some(inner) = inner else {
        return Verdict::Refuse(format!(
            "ingot: {method} refused: the gateway's guard cannot read the message it carries"
        ));
    };
    match inner["method"].as_str() {
        Some(carried) if rule(carried).is_some() => Verdict::Refuse(format!(
            "ingot: {carried} may not be sent through {method}: attach with flatten: true and \
             send it on that session, where the gateway's guard checks it"
        )),
        _ => Verdict::Pass,
    }
}

/// Whether Chromium would read `url` from the file system: `file:`, also behind the schemes
/// that wrap another URL. Chromium drops tabs and newlines anywhere in a URL, leading and
/// trailing spaces and controls, and ignores the scheme's case; so does this.
pub(crate) fn is_file_url(url: &str) -> bool {
    let mut cleaned: String = url
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect::<String>()
        .trim_matches(|c: char| c <= ' ')
        .to_ascii_lowercase();
    loop {
        if cleaned.starts_with("file:") {
            return true;
        }
        let inner = ["view-source:", "filesystem:"]
            .iter()
            .find_map(|wrapper| cleaned.strip_prefix(wrapper));
        match inner {
            Some(inner) => cleaned = inner.trim_start_matches(|c: char| c <= ' ').to_owned(),
            None => return false,
        }
    }
}

/// Rewrites a `setDownloadBehavior` command so that downloads go to `dir`.
fn downloads_into(mut command: Value, dir: &Path) -> Verdict {
    let Some(params) = command.get_mut("params").and_then(Value::as_object_mut) else {
        // Chromium refuses it (`behavior` is required); forwarded as read.
        return Verdict::Rewrite(Bytes::from(command.to_string()));
    };
    match params.get("behavior").and_then(Value::as_str) {
        Some("deny") => {
            params.remove("downloadPath");
        }
        Some("default") => {
            params.insert("behavior".into(), "allow".into());
            params.insert("downloadPath".into(), dir.to_string_lossy().into());
        }
        _ => {
            params.insert("downloadPath".into(), dir.to_string_lossy().into());
        }
    }
    Verdict::Rewrite(Bytes::from(command.to_string()))
}

/// Checks (and resolves) every path of a command that names files.
async fn confine_paths(method: &str, mut command: Value, dir: PathBuf, drag: bool) -> Verdict {
    let files = if drag {
        command.pointer_mut("/params/data/files")
    } else {
        command.pointer_mut("/params/files")
    };
    let Some(Value::Array(files)) = files else {
        // No paths (drag data without files), or Chromium refuses it: forwarded as read.
        return Verdict::Rewrite(Bytes::from(command.to_string()));
    };
    let raw: Vec<Option<String>> = files
        .iter()
        .map(|f| f.as_str().map(str::to_owned))
        .collect();
    let resolved = tokio::task::spawn_blocking(move || resolve_all(&dir, &raw)).await;
    let refusal = || {
        Verdict::Refuse(format!(
            "ingot: {method} may only name files in this session's files directory"
        ))
    };
    match resolved {
        Ok(Some(paths)) => {
            *files = paths.into_iter().map(Value::from).collect();
            Verdict::Rewrite(Bytes::from(command.to_string()))
        }
        Ok(None) | Err(_) => refusal(),
    }
}

/// Resolves every name inside `dir`; `None` if one is not a string or resolves outside it.
fn resolve_all(dir: &Path, raw: &[Option<String>]) -> Option<Vec<String>> {
    let dir = std::fs::canonicalize(dir).ok()?;
    raw.iter()
        .map(|name| {
            let name = name.as_deref()?;
            resolve_inside(&dir, name).map(|p| p.to_string_lossy().into_owned())
        })
        .collect()
}

/// `name` (absolute, or relative to `dir`) with every symlink and `..` resolved, if it
/// exists and lies inside `dir` (which must be canonical already). Blocking.
pub(crate) fn resolve_inside(dir: &Path, name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('\0') {
        return None;
    }
    let resolved = std::fs::canonicalize(dir.join(name)).ok()?;
    resolved.starts_with(dir).then_some(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_found_however_they_are_written() {
        for url in [
            "file:///etc/passwd",
            "FILE:///etc/passwd",
            "  file:/etc/passwd",
            "fi\tle:///etc/passwd",
            "view-source:file:///etc/passwd",
            "view-source: FiLe:///x",
            "filesystem:file:///x",
        ] {
            assert!(is_file_url(url), "{url:?}");
        }
        for url in [
            "https://example.com/file:///x",
            "about:blank",
            "data:text/html,file:",
            "http://file/",
        ] {
            assert!(!is_file_url(url), "{url:?}");
        }
    }

    #[test]
    fn paths_resolve_inside_the_files_directory_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(tmp.path()).expect("canonical");
        let dir = root.join("files");
        std::fs::create_dir_all(dir.join("sub")).expect("dirs");
        std::fs::write(dir.join("sub/in.txt"), "x").expect("file");
        std::fs::write(root.join("secret"), "s").expect("file");
        std::os::unix::fs::symlink(root.join("secret"), dir.join("link")).expect("symlink");
        let inside = dir.join("sub/in.txt");
        assert_eq!(resolve_inside(&dir, "sub/in.txt"), Some(inside.clone()));
        assert_eq!(
            resolve_inside(&dir, inside.to_str().expect("utf-8")),
            Some(inside.clone())
        );
        assert_eq!(resolve_inside(&dir, "sub/../sub/in.txt"), Some(inside));
        for outside in [
            "../secret",
            "link",
            "/etc/passwd",
            "sub/../../secret",
            "missing.txt",
            "",
        ] {
            assert_eq!(resolve_inside(&dir, outside), None, "{outside:?}");
        }
        let abs = root.join("secret");
        assert_eq!(resolve_inside(&dir, abs.to_str().expect("utf-8")), None);
    }

    #[test]
    fn download_behavior_is_rewritten_to_the_files_directory() {
        let dir = Path::new("/data/files/S");
        let rewrite = |params: Value| match downloads_into(
            json!({"id": 1, "method": "Browser.setDownloadBehavior", "params": params}),
            dir,
        ) {
            Verdict::Rewrite(b) => {
                serde_json::from_slice::<Value>(&b).expect("JSON")["params"].clone()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            rewrite(
                json!({"behavior": "allowAndName", "downloadPath": "/data/files/OTHER", "eventsEnabled": true, "browserContextId": "C"})
            ),
            json!({"behavior": "allowAndName", "downloadPath": "/data/files/S", "eventsEnabled": true, "browserContextId": "C"})
        );
        assert_eq!(
            rewrite(json!({"behavior": "allow"})),
            json!({"behavior": "allow", "downloadPath": "/data/files/S"})
        );
        assert_eq!(
            rewrite(json!({"behavior": "default"})),
            json!({"behavior": "allow", "downloadPath": "/data/files/S"})
        );
        assert_eq!(
            rewrite(json!({"behavior": "deny", "downloadPath": "/tmp"})),
            json!({"behavior": "deny"})
        );
    }

    #[test]
    fn only_listed_methods_have_rules() {
        assert_eq!(rule("Runtime.evaluate"), None);
        assert_eq!(rule("Page.setInterceptFileChooserDialog"), None);
        assert_eq!(rule("Extensions.uninstall"), None);
        assert_eq!(
            rule("DOM.setFileInputFiles"),
            Some(Rule::Paths { drag: false })
        );
        assert_eq!(rule("Extensions.loadUnpacked"), Some(Rule::Refused));
        assert_eq!(rule("Target.exposeDevToolsProtocol"), Some(Rule::Refused));
        assert!(refused("Target.exposeDevToolsProtocol").contains("past the gateway's guard"));
        assert_eq!(rule("Target.createBrowserContext"), Some(Rule::NoOwnProxy));
        let own = json!({"id":1,"method":"Target.createBrowserContext","params":{"proxyServer":"direct://"}});
        assert!(matches!(
            no_own_proxy("Target.createBrowserContext", &own),
            Verdict::Refuse(_)
        ));
        let plain = json!({"id":1,"method":"Target.createBrowserContext","params":{"disposeOnDetach":true}});
        assert!(matches!(
            no_own_proxy("Target.createBrowserContext", &plain),
            Verdict::Pass
        ));
        let carried = json!({"id":2,"method":"Target.sendMessageToTarget","params":{"sessionId":"S",
            "message":"{\"id\":1,\"method\":\"Page.navigate\",\"params\":{\"url\":\"file:///etc/passwd\"}}"}});
        assert!(matches!(
            nested("Target.sendMessageToTarget", &carried),
            Verdict::Refuse(_)
        ));
        let harmless = json!({"id":3,"method":"Target.sendMessageToTarget","params":{"sessionId":"S",
            "message":"{\"id\":1,\"method\":\"Runtime.evaluate\",\"params\":{\"expression\":\"1\"}}"}});
        assert!(matches!(
            nested("Target.sendMessageToTarget", &harmless),
            Verdict::Pass
        ));
        let unreadable =
            json!({"id":4,"method":"Target.sendMessageToTarget","params":{"message":"{"}});
        assert!(matches!(
            nested("Target.sendMessageToTarget", &unreadable),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn clients_are_counted_up_to_the_cap() {
        let guard = Guard::new(
            Limits {
                max_clients: 2,
                ..Limits::default()
            },
            None,
        );
        assert!(guard.client_in().is_ok() && guard.client_in().is_ok());
        assert!(guard.client_in().is_err());
        guard.client_out();
        assert!(guard.client_in().is_ok());
    }

    #[tokio::test]
    async fn the_inflight_budget_holds_bytes_until_released_and_a_large_message_takes_all() {
        let guard = Guard::new(
            Limits {
                inflight_bytes: 1000,
                ..Limits::default()
            },
            None,
        );
        let first = guard.inflight(600).await.expect("permit");
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), guard.inflight(600));
        assert!(
            waiting.await.is_err(),
            "600 more bytes wait while 600 are held"
        );
        drop(first);
        let all = guard
            .inflight(5000)
            .await
            .expect("a message over the budget takes it all");
        assert_eq!(all.num_permits(), 1000);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), guard.inflight(1));
        assert!(waiting.await.is_err());
        drop(all);
        assert!(guard.inflight(1000).await.is_some());
    }

    #[test]
    fn a_download_over_the_cap_is_cancelled_once_and_its_leftovers_removed() {
        let guard = Guard::new(
            Limits {
                max_file_bytes: 100,
                ..Limits::default()
            },
            Some(PathBuf::from("/f")),
        );
        let created = br#"{"method":"Target.targetCreated","params":{"targetInfo":{"targetId":"T","type":"page","browserContextId":"C"}}}"#;
        assert_eq!(guard.root_event(created), Action::None);
        let begin = br#"{"method":"Browser.downloadWillBegin","params":{"frameId":"T","guid":"G","url":"http://x/big","suggestedFilename":"big.bin"}}"#;
        assert_eq!(guard.root_event(begin), Action::None);
        let small = br#"{"method":"Browser.downloadProgress","params":{"guid":"G","totalBytes":0,"receivedBytes":50,"state":"inProgress"}}"#;
        assert_eq!(guard.root_event(small), Action::None);
        let big = br#"{"method":"Browser.downloadProgress","params":{"guid":"G","totalBytes":0,"receivedBytes":150,"state":"inProgress"}}"#;
        let Action::Send(cancels) = guard.root_event(big) else {
            panic!("not cancelled");
        };
        assert_eq!(cancels.len(), 2, "default context and C: {cancels:?}");
        assert_eq!(guard.root_event(big), Action::None, "cancelled once");
        let done = br#"{"method":"Browser.downloadProgress","params":{"guid":"G","totalBytes":0,"receivedBytes":150,"state":"canceled"}}"#;
        let Action::Remove(paths) = guard.root_event(done) else {
            panic!("nothing removed");
        };
        assert!(
            paths.contains(&PathBuf::from("/f/big.bin.crdownload")),
            "{paths:?}"
        );
    }

    #[test]
    fn downloads_together_stop_at_the_sessions_files_cap() {
        let guard = Guard::new(
            Limits {
                max_file_bytes: 100,
                max_session_bytes: 150,
                ..Limits::default()
            },
            Some(PathBuf::from("/f")),
        );
        let progress = |guid: &str, received: u64, state: &str| {
            format!(
                r#"{{"method":"Browser.downloadProgress","params":{{"guid":"{guid}","totalBytes":0,"receivedBytes":{received},"state":"{state}"}}}}"#
            )
        };
        let first = progress("A", 90, "completed");
        assert_eq!(guard.root_event(first.as_bytes()), Action::None);
        let fits = progress("B", 60, "inProgress");
        assert_eq!(guard.root_event(fits.as_bytes()), Action::None);
        let over = progress("B", 61, "inProgress");
        assert!(
            matches!(guard.root_event(over.as_bytes()), Action::Send(_)),
            "90 finished + 61 passes the session's 150"
        );
        let beside = progress("C", 10, "inProgress");
        assert!(
            matches!(guard.root_event(beside.as_bytes()), Action::Send(_)),
            "90 finished + 61 under way (cancelled, not yet ended) + 10 passes 150 too"
        );
    }
}
