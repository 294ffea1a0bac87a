//! The browser sandbox with real Chromium, a hostile tenant as the client: from its own
//! session it cannot read the API keys file, the usage database, or another live session's
//! profile and files, through `file://` or `DOM.setFileInputFiles`; its own files still
//! work; each browser runs as a user of its own with no `INGOT_*` variable; crash loops
//! leave nothing outside the sessions' directories; a killed gateway's browsers' files are
//! taken back at the next start; and `--insecure-shared-browser-user` still serves. Both
//! engines (`--engine shell`, `--engine chromium`) and a headful session (full Chromium and
//! its `Xvfb`) run sandboxed: the browser as an unprivileged uid with Chromium's own sandbox
//! on and its filesystem confined, the headful session's X server as the same uid, with
//! `no_new_privs`, in the browser's cgroup.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const ALPHA: &str = "alpha-key-0123456789abcdef";
const BETA: &str = "beta-key-0123456789abcdef";
const GAMMA: &str = "gamma-key-0123456789abcdef";
const ALPHA_SECRET: &str = "ALPHA-SECRET-CONTENT-42";
/// The default `--browser-uids`.
const BROWSER_UIDS: std::ops::RangeInclusive<u32> = 600_000..=600_999;

/// A page with a file input, a cookie, and a download on demand.
fn site() -> Vec<(&'static str, String)> {
    vec![(
        "/",
        "<title>sandbox</title><input id=pick type=file>\
         <script>document.cookie = 'alpha=ALPHA-COOKIE-VALUE; max-age=3600';\
         function download() { const a = document.createElement('a'); \
         a.href = URL.createObjectURL(new Blob(['made by the page'])); \
         a.download = 'report.txt'; document.body.append(a); a.click(); }</script>"
            .into(),
    )]
}

/// One tenant's way to the gateway: its key on every request.
struct Tenant<'a> {
    gw: &'a Gateway,
    key: &'static str,
}

impl Tenant<'_> {
    async fn create(&self, body: Value) -> (String, Cdp) {
        let r = self
            .gw
            .http
            .post(self.gw.url("/v1/sessions"))
            .header("steel-api-key", self.key)
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 200, "{}", self.gw.log_text());
        let session: Value = r.json().await.expect("session JSON");
        let ws = format!(
            "{}&apiKey={}",
            session["websocketUrl"].as_str().expect("url"),
            self.key
        );
        (
            session["id"].as_str().expect("id").to_owned(),
            Cdp::connect(&ws).await,
        )
    }

    async fn upload(&self, id: &str, name: &str, bytes: &[u8]) -> String {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_owned()),
            )
            .text("path", name.to_owned());
        let uploaded: Value = self
            .gw
            .http
            .post(self.gw.url(&format!("/v1/sessions/{id}/files")))
            .header("steel-api-key", self.key)
            .multipart(form)
            .send()
            .await
            .expect("upload")
            .json()
            .await
            .expect("File JSON");
        uploaded["path"].as_str().expect("path").to_owned()
    }

    async fn files(&self, id: &str) -> Value {
        let r = self
            .gw
            .http
            .get(self.gw.url(&format!("/v1/sessions/{id}/files")))
            .header("steel-api-key", self.key)
            .send()
            .await
            .expect("list");
        r.json().await.expect("files JSON")
    }

    async fn release(&self, id: &str) {
        let r = self
            .gw
            .http
            .post(self.gw.url(&format!("/v1/sessions/{id}/release")))
            .header("steel-api-key", self.key)
            .send()
            .await
            .expect("release");
        assert_eq!(r.status(), 200);
    }
}

/// Navigates to `url` (a `file://` one) and returns the page's text, or the navigation's
/// error when the browser refused it.
async fn navigate_text(cdp: &mut Cdp, page: &str, url: &str) -> String {
    let reply = cdp
        .call_full("Page.navigate", json!({"url": url}), Some(page))
        .await;
    if reply.get("error").is_some() {
        return format!("refused: {reply}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = cdp
        .call_full(
            "Runtime.evaluate",
            json!({"expression": "document.documentElement.innerText", "returnByValue": true}),
            Some(page),
        )
        .await;
    text["result"]["result"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Puts `path` into the page's `#pick` input and reads it with the File API: `read:<text>`,
/// `error:<name>`, or `refused:` when the CDP call itself was refused.
async fn file_input_read(cdp: &mut Cdp, page: &str, path: &str) -> String {
    // A late event of the previous navigation may have ended `navigate` early: wait for the
    // input itself.
    let deadline = Instant::now() + secs(20);
    let object = loop {
        let input = cdp
            .call(
                "Runtime.evaluate",
                json!({"expression": "document.querySelector('#pick')"}),
                Some(page),
            )
            .await;
        let object = input["result"]["objectId"].clone();
        if object.is_string() {
            break object;
        }
        assert!(Instant::now() < deadline, "no file input: {input}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let set = cdp
        .call_full(
            "DOM.setFileInputFiles",
            json!({"files": [path], "objectId": object}),
            Some(page),
        )
        .await;
    if set.get("error").is_some() {
        return format!("refused: {set}");
    }
    cdp.eval(
        page,
        "(async () => { const f = document.querySelector('#pick').files[0]; \
         if (!f) return 'error:no file'; \
         try { return 'read:' + await f.text(); } catch (e) { return 'error:' + e.name; } })()",
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// The real uid and the environment of a process.
fn uid_and_environ(pid: i32) -> (u32, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("Uid line");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    (uid, String::from_utf8_lossy(&environ).replace('\0', "\n"))
}

/// Waits until the gateway's log says `n` pooled browsers became ready.
async fn pooled_browsers_ready(gw: &Gateway, n: usize) {
    let deadline = Instant::now() + secs(30);
    while gw.log_text().matches("pool browser ready").count() < n {
        assert!(Instant::now() < deadline, "{}", gw.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the session lists `name`.
async fn wait_listed(tenant: &Tenant<'_>, id: &str, name: &str) {
    let deadline = Instant::now() + secs(20);
    while !tenant.files(id).await.to_string().contains(name) {
        assert!(Instant::now() < deadline, "{name} never listed for {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pids of the browsers (leaders, not helpers) whose profiles are under `data`.
fn leaders(data: &Path) -> Vec<i32> {
    let marker = format!("--user-data-dir={}/sessions/", data.display());
    browser_pids_in(data)
        .into_iter()
        .filter(|&(pid, pgid)| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            pid == pgid && cmdline.contains(&marker) && !cmdline.contains("--type=")
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Waits until `path` exists.
async fn wait_exists(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_reads_nothing_outside_its_own_session() {
    let _shared = shared().await;
    let site = PageServer::start(site()).await;
    // A keys file every user could read, were it not for Landlock.
    let keys = tempfile::tempdir().unwrap();
    std::fs::set_permissions(keys.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let keys_file = keys.path().join("keys");
    std::fs::write(&keys_file, format!("alpha:{ALPHA}\nbeta:{BETA}\n")).unwrap();
    std::fs::set_permissions(&keys_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let gw = Gateway::start_with_env(
        &[
            "--api-keys-file",
            keys_file.to_str().unwrap(),
            "--pool-size",
            "1",
            "--max-sessions",
            "4",
        ],
        &[("INGOT_API_KEYS", &format!("gamma:{GAMMA}"))],
    )
    .await;
    let (alpha, beta) = (
        Tenant {
            gw: &gw,
            key: ALPHA,
        },
        Tenant { gw: &gw, key: BETA },
    );

    let (_, health) = gw.get("/healthz").await;
    let sandbox = &health["sandbox"];
    assert_eq!(sandbox["mode"], "confined", "{health}");
    assert_eq!(sandbox["browserUser"], "per_browser", "{health}");
    assert_eq!(sandbox["chromiumSandbox"], true, "{health}");
    assert!(
        sandbox["landlockAbi"].as_u64().unwrap_or(0) >= 1,
        "{health}"
    );
    assert_eq!(sandbox["environmentCleared"], true, "{health}");

    // alpha takes the pooled browser; its page sets cookies and downloads a file, and it
    // uploads one.
    pooled_browsers_ready(&gw, 1).await;
    let (alpha_id, mut alpha_cdp) = alpha.create(json!({})).await;
    let alpha_page = alpha_cdp.attach_first_page().await;
    alpha_cdp.navigate(&alpha_page, &site.url("/")).await;
    alpha_cdp.eval(&alpha_page, "download()").await;
    let alpha_secret = alpha
        .upload(&alpha_id, "secret.txt", ALPHA_SECRET.as_bytes())
        .await;
    // Chromium writes cookies to disk every 30 s, or after 512 changes.
    alpha_cdp
        .eval(
            &alpha_page,
            "for (let i = 0; i < 600; i++) document.cookie = `c${i}=v; max-age=3600`",
        )
        .await;
    let cookies = gw
        .data_dir
        .join(format!("sessions/{alpha_id}/profile/Default/Cookies"));
    wait_exists(&cookies, secs(30)).await;
    wait_listed(&alpha, &alpha_id, "report.txt").await;

    // beta takes the next pooled browser under an id of its own: the directory that browser
    // may write its downloads to moves to that id.
    pooled_browsers_ready(&gw, 2).await;
    let beta_id = uuid::Uuid::new_v4().to_string();
    let (id, mut cdp) = beta.create(json!({"sessionId": beta_id})).await;
    assert_eq!(id, beta_id);
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &site.url("/")).await;
    cdp.eval(&page, "download()").await;
    wait_listed(&beta, &beta_id, "report.txt").await;
    let data = gw.data_dir.clone();
    let targets: Vec<(PathBuf, &str)> = vec![
        (keys_file.clone(), ALPHA),
        (data.join("usage.sqlite3"), "SQLite format"),
        (cookies.clone(), "SQLite format"),
        (PathBuf::from(&alpha_secret), ALPHA_SECRET),
        (
            data.join(format!("files/{alpha_id}/report.txt")),
            "made by the page",
        ),
    ];
    for (path, marker) in &targets {
        assert!(
            path.exists(),
            "{} should exist for the test",
            path.display()
        );
        cdp.navigate(&page, &site.url("/")).await;
        let read = file_input_read(&mut cdp, &page, path.to_str().unwrap()).await;
        assert!(
            !(read.contains(marker) || (read.starts_with("read:") && read.len() > 5)),
            "setFileInputFiles read {}: {read}",
            path.display()
        );
        let url = format!("file://{}", path.display());
        let text = navigate_text(&mut cdp, &page, &url).await;
        assert!(
            !text.contains(marker),
            "file:// read {}: {text}",
            path.display()
        );
    }
    // Nor list them (a listing's heading names the directory, so look for its entries).
    let listings = [
        (data.join("sessions"), alpha_id.as_str()),
        (data.join(format!("files/{alpha_id}")), "secret.txt"),
    ];
    for (dir, entry) in listings {
        let text = navigate_text(&mut cdp, &page, &format!("file://{}/", dir.display())).await;
        assert!(!text.contains(entry), "listed {}: {text}", dir.display());
    }
    let listed = beta.files(&beta_id).await.to_string();
    assert!(
        !listed.contains("Cookies") && !listed.contains("usage"),
        "{listed}"
    );

    // Its own files still fill a file input.
    cdp.navigate(&page, &site.url("/")).await;
    let mine = beta
        .upload(&beta_id, "inputs/mine.txt", b"beta bytes")
        .await;
    assert_eq!(
        file_input_read(&mut cdp, &page, &mine).await,
        "read:beta bytes"
    );
    // Whatever the gateway's umask, an upload belongs to the browser's user.
    let beta_dir = std::fs::metadata(data.join(format!("files/{beta_id}"))).unwrap();
    let mine = PathBuf::from(&mine);
    for uploaded in [mine.as_path(), mine.parent().unwrap()] {
        let meta = std::fs::metadata(uploaded).unwrap();
        assert_eq!(
            meta.uid(),
            beta_dir.uid(),
            "{} is not the browser's",
            uploaded.display()
        );
    }

    // Each browser (alpha's, beta's, the pool's) runs as a user of its own, with none of the
    // gateway's variables.
    let browsers = leaders(&data);
    let mut uids: Vec<u32> = Vec::new();
    for pid in &browsers {
        let (uid, env) = uid_and_environ(*pid);
        assert!(BROWSER_UIDS.contains(&uid), "browser {pid} runs as {uid}");
        assert!(!env.contains("INGOT_"), "{env}");
        assert!(
            env.contains(&format!("HOME={}/sessions/", data.display())),
            "{env}"
        );
        uids.push(uid);
    }
    uids.sort_unstable();
    uids.dedup();
    assert!(
        browsers.len() >= 2 && uids.len() == browsers.len(),
        "{browsers:?}: {uids:?}"
    );

    // Once a browser ends, its retained files belong to the gateway again.
    alpha_cdp.close().await;
    alpha.release(&alpha_id).await;
    let files_dir = data.join(format!("files/{alpha_id}"));
    for entry in [
        files_dir.clone(),
        files_dir.join("report.txt"),
        files_dir.join("secret.txt"),
    ] {
        let meta = std::fs::metadata(&entry).unwrap();
        assert_eq!(
            meta.uid(),
            0,
            "{} still owned by {}",
            entry.display(),
            meta.uid()
        );
    }
    cdp.close().await;
    beta.release(&beta_id).await;
}

/// Every file under `dir` (not following links, skipping `skip`), with its owner.
fn files_under(dir: &Path, skip: &Path, depth: usize) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path == skip {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        found.push((path.clone(), meta.uid()));
        if meta.is_dir() && depth > 0 {
            found.extend(files_under(&path, skip, depth - 1));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loops_leave_nothing_outside_the_session() {
    let _shared = shared().await;
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let gateway_chromium = home.join(".config/chromium");
    let before = files_under(&gateway_chromium, Path::new("/"), 6);
    let gw = Gateway::start(&[]).await;
    let scratch = ingot::browser::scratch_root(&gw.data_dir);
    for _ in 0..3 {
        let session = gw.create(json!({})).await;
        let id = session["id"].as_str().unwrap().to_owned();
        let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
        cdp.send_raw(json!({"id": 1, "method": "Browser.crash"}).to_string())
            .await;
        let (ended, _) = gw.wait_ended(&id, secs(20)).await;
        assert_eq!(ended["status"], "failed", "{ended}");
    }
    // (Other tests' browsers that share the gateway's user may write here; a crash dump or
    // a browser user's file is what must not appear.)
    let after = files_under(&gateway_chromium, Path::new("/"), 6);
    let new: Vec<_> = after
        .iter()
        .filter(|f| !before.contains(f))
        .filter(|(p, uid)| {
            let name = p.to_string_lossy();
            name.ends_with(".dmp") || name.ends_with(".meta") || BROWSER_UIDS.contains(uid)
        })
        .collect();
    assert!(new.is_empty(), "new files in the gateway's home: {new:?}");
    // Whatever a browser writes belongs to its user: nothing of theirs is left in /tmp
    // (outside the scratch root) or the gateway's home.
    let strays: Vec<_> = files_under(Path::new("/tmp"), &scratch, 3)
        .into_iter()
        .chain(files_under(&home, Path::new("/"), 3))
        .filter(|(_, uid)| BROWSER_UIDS.contains(uid))
        // Other tests' gateways: their sessions' and files' directories, their scratch roots.
        .filter(|(p, _)| {
            !p.to_string_lossy().starts_with("/tmp/ingot-")
                && !p
                    .components()
                    .any(|c| c.as_os_str() == "sessions" || c.as_os_str() == "files")
        })
        .collect();
    assert!(
        strays.is_empty(),
        "browsers' files outside their sessions: {strays:?}"
    );
    gw.assert_clean(secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_browsers_and_their_files_are_taken_back_at_the_next_start() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = Gateway::start_in(dir.path(), &[]).await;
    let session = first.create(json!({})).await;
    let id = session["id"].as_str().unwrap().to_owned();
    let files_dir = dir.path().join(format!("files/{id}"));
    assert!(BROWSER_UIDS.contains(&std::fs::metadata(&files_dir).unwrap().uid()));
    first.signal(9);
    first.wait_exit(secs(10));
    drop(first);
    let second = Gateway::start_in(dir.path(), &[]).await;
    assert_eq!(
        std::fs::metadata(&files_dir).unwrap().uid(),
        0,
        "files taken back"
    );
    second.assert_clean(secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_insecure_shared_browser_user_still_serves_a_session() {
    let _shared = shared().await;
    let site = PageServer::start(site()).await;
    let gw = Gateway::start(&["--insecure-shared-browser-user"]).await;
    assert!(gw.wait_for_log("TENANTS ARE NOT ISOLATED", secs(5)).await);
    let (_, health) = gw.get("/healthz").await;
    assert_eq!(
        health["sandbox"]["mode"], "insecure_shared_browser_user",
        "{health}"
    );
    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().unwrap().to_owned();
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &site.url("/")).await;
    assert_eq!(cdp.eval(&page, "document.title").await, "sandbox");
    let leader = browser_leader(&gw.data_dir, &id);
    let (uid, _) = uid_and_environ(leader);
    assert_eq!(uid, 0, "the gateway's own user");
    let cmdline = std::fs::read(format!("/proc/{leader}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("--no-sandbox"));
    cdp.close().await;
    gw.release(&id).await;
    gw.assert_clean(secs(10)).await;
}

/// What a sandbox case runs: a headless session on either engine, or a headful one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Shell,
    Chromium,
    /// `"headless": false` on a gateway whose headless engine is the shell: full Chromium on
    /// an `Xvfb` of its own.
    Headful,
}

impl Engine {
    fn args(self) -> [&'static str; 2] {
        match self {
            Engine::Shell | Engine::Headful => ["--engine", "shell"],
            Engine::Chromium => ["--engine", "chromium"],
        }
    }

    fn create_body(self) -> Value {
        match self {
            Engine::Headful => {
                json!({"headless": false, "dimensions": {"width": 1000, "height": 700}})
            }
            _ => json!({}),
        }
    }

    /// The file name of the executable the session's browser runs.
    fn executable(self) -> &'static str {
        match self {
            Engine::Shell => "chromium-headless-shell",
            Engine::Chromium | Engine::Headful => "chromium",
        }
    }
}

/// A line of `/proc/<pid>/status` (its value, trimmed).
fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim_start_matches(':').trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} for {pid}"))
}

fn cmdline_of(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).replace('\0', " ")
}

/// Every running process as (pid, parent pid, process group).
fn process_table() -> Vec<(i32, i32, i32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 1..]
            .split_whitespace()
            .collect();
        if fields.first() != Some(&"Z")
            && let Some(ppid) = fields.get(1).and_then(|p| p.parse().ok())
            && let Some(pgid) = fields.get(2).and_then(|p| p.parse().ok())
        {
            found.push((pid, ppid, pgid));
        }
    }
    found
}

/// The `Xvfb` processes of a gateway: its descendants, or processes that name its data
/// directory.
fn xvfbs_of(gw: &Gateway) -> Vec<i32> {
    let table = process_table();
    let mut mine = vec![gw.pid() as i32];
    let mut frontier = mine.clone();
    while !frontier.is_empty() {
        frontier = table
            .iter()
            .filter(|(pid, ppid, _)| frontier.contains(ppid) && !mine.contains(pid))
            .map(|(pid, _, _)| *pid)
            .collect();
        mine.extend(&frontier);
    }
    let data = gw.data_dir.display().to_string();
    table
        .iter()
        .map(|(pid, _, _)| *pid)
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            exe.file_name().is_some_and(|n| n == "Xvfb")
                && (mine.contains(pid) || cmdline_of(*pid).contains(&data))
        })
        .collect()
}

/// The browser runs the engine's executable as a uid of its own, with Chromium's sandbox on
/// (no `--no-sandbox`), `no_new_privs` and none of the gateway's variables; returns its uid.
fn assert_browser_sandboxed(engine: Engine, gw: &Gateway, leader: i32) -> u32 {
    let (uid, env) = uid_and_environ(leader);
    assert!(
        BROWSER_UIDS.contains(&uid),
        "{engine:?}: browser runs as {uid}"
    );
    assert!(!env.contains("INGOT_"), "{engine:?}: {env}");
    assert!(
        env.contains(&format!("HOME={}/sessions/", gw.data_dir.display())),
        "{engine:?}: {env}"
    );
    let exe = std::fs::read_link(format!("/proc/{leader}/exe")).expect("exe");
    assert_eq!(
        exe.file_name().and_then(|n| n.to_str()),
        Some(engine.executable()),
        "{engine:?} runs {}",
        exe.display()
    );
    let cmdline = cmdline_of(leader);
    assert!(!cmdline.contains("--no-sandbox"), "{engine:?}: {cmdline}");
    if engine == Engine::Headful {
        assert!(!cmdline.contains("--headless"), "headful: {cmdline}");
    }
    assert_eq!(status_field(leader, "NoNewPrivs"), "1", "{engine:?}");
    uid
}

/// Chromium's own sandbox: the session's renderers live in a user namespace of their own.
async fn assert_renderers_in_their_own_namespace(engine: Engine, leader: i32) {
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
    let deadline = Instant::now() + secs(10);
    loop {
        // In the browser's process group (a renderer's command line need not name the
        // profile).
        let renderers: Vec<i32> = process_table()
            .into_iter()
            .filter(|&(pid, _, pgid)| pgid == leader && cmdline_of(pid).contains("--type=renderer"))
            .map(|(pid, _, _)| pid)
            .collect();
        if !renderers.is_empty() {
            for r in renderers {
                assert!(
                    ns(r).is_some(),
                    "{engine:?}: renderer {r}'s namespace unreadable"
                );
                assert_ne!(
                    ns(r),
                    ns(leader),
                    "{engine:?}: renderer {r} shares the browser's user namespace"
                );
            }
            return;
        }
        assert!(Instant::now() < deadline, "{engine:?}: no renderer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sockets a process listens on, in its own network namespace: TCP ones (as lines of
/// `/proc/<pid>/net/tcp*`) and Unix ones (their paths, `@…` for abstract ones).
fn listening_sockets(pid: i32) -> (Vec<String>, Vec<String>) {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table =
        |name: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{name}")).unwrap_or_default();
    // tcp: `sl local rem st … inode` (field 9), LISTEN is state 0A.
    let tcp = [table("tcp"), table("tcp6")]
        .concat()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(3) == Some(&"0A") && f.get(9).is_some_and(|i| inodes.iter().any(|n| n == i))
        })
        .map(str::to_owned)
        .collect();
    // unix: `Num RefCount Protocol Flags Type St Inode Path`; listening has flag 0x10000.
    let unix = table("unix")
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let listening = u32::from_str_radix(f.get(3)?, 16).ok()? & 0x10000 != 0;
            let inode = *f.get(6)?;
            let path = f.get(7).copied().unwrap_or_default().to_owned();
            (listening && inodes.iter().any(|n| n == inode)).then_some(path)
        })
        .collect();
    (tcp, unix)
}

/// The headful session's X server: one, as the browser's uid, `no_new_privs`, none of the
/// gateway's variables, in the browser's cgroup, listening on a socket in the data directory
/// only (no TCP, no abstract socket).
fn assert_display_sandboxed(gw: &Gateway, leader: i32, browser_uid: u32) {
    let xvfb = xvfbs_of(gw);
    assert_eq!(xvfb.len(), 1, "one Xvfb for the session: {xvfb:?}");
    let (uid, env) = uid_and_environ(xvfb[0]);
    assert_eq!(uid, browser_uid, "Xvfb runs as the browser's uid");
    assert!(!env.contains("INGOT_"), "{env}");
    assert_eq!(status_field(xvfb[0], "NoNewPrivs"), "1", "Xvfb");
    let cgroup = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert_eq!(
        cgroup(xvfb[0]),
        cgroup(leader),
        "Xvfb in the browser's cgroup"
    );
    let (tcp, unix) = listening_sockets(xvfb[0]);
    assert!(tcp.is_empty(), "Xvfb listens on TCP: {tcp:?}");
    let data = gw.data_dir.display().to_string();
    assert!(
        !unix.is_empty() && unix.iter().all(|p| p.starts_with(&data)),
        "Xvfb's sockets must all be in the data directory, none abstract: {unix:?}"
    );
}

/// A session reads no file outside its own, by `file://` or a file input.
async fn assert_files_confined(engine: Engine, cdp: &mut Cdp, page: &str, site: &PageServer) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, ALPHA_SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    cdp.navigate(page, &site.url("/")).await;
    let read = file_input_read(cdp, page, secret.to_str().unwrap()).await;
    assert!(
        !(read.contains(ALPHA_SECRET) || (read.starts_with("read:") && read.len() > 5)),
        "{engine:?}: setFileInputFiles read {read}"
    );
    let text = navigate_text(cdp, page, &format!("file://{}", secret.display())).await;
    assert!(
        !text.contains(ALPHA_SECRET),
        "{engine:?}: file:// read {text}"
    );
}

/// One engine's session under the sandbox, from create to a clean release.
async fn a_session_runs_sandboxed(engine: Engine) {
    let _shared = shared().await;
    let site = PageServer::start(site()).await;
    let gw = Gateway::start(&engine.args()).await;
    let (_, health) = gw.get("/healthz").await;
    assert_eq!(health["sandbox"]["mode"], "confined", "{health}");
    assert_eq!(health["sandbox"]["chromiumSandbox"], true, "{health}");
    assert_eq!(health["engines"]["default"], engine.args()[1], "{health}");
    if engine == Engine::Headful {
        assert_eq!(health["engines"]["headful"], true, "{health}");
    }
    let session = gw.create(engine.create_body()).await;
    let id = session["id"].as_str().unwrap().to_owned();
    assert_eq!(session["headless"], engine != Engine::Headful, "{session}");
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &site.url("/")).await;
    assert_eq!(cdp.eval(&page, "document.title").await, "sandbox");

    let leader = browser_leader(&gw.data_dir, &id);
    let uid = assert_browser_sandboxed(engine, &gw, leader);
    assert_renderers_in_their_own_namespace(engine, leader).await;
    if engine == Engine::Headful {
        assert_display_sandboxed(&gw, leader, uid);
    }
    assert_files_confined(engine, &mut cdp, &page, &site).await;

    cdp.close().await;
    gw.release(&id).await;
    gw.assert_clean(secs(10)).await;
    let deadline = Instant::now() + secs(10);
    while !xvfbs_of(&gw).is_empty() {
        assert!(Instant::now() < deadline, "Xvfb left: {:?}", xvfbs_of(&gw));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headless_shell_runs_sandboxed() {
    a_session_runs_sandboxed(Engine::Shell).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_chromium_runs_sandboxed() {
    a_session_runs_sandboxed(Engine::Chromium).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headful_session_and_its_xvfb_run_sandboxed() {
    a_session_runs_sandboxed(Engine::Headful).await;
}
