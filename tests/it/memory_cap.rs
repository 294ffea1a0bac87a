//! `--session-memory-max` with real Chromium: a page that allocates past the cap ends its
//! session `failed` within 2 s (recorded `memory_limit`, shown to Steel clients as
//! `browser_crashed`), leaves no process behind, and its neighbour goes on answering; and
//! `--session-pids-max` reaches the browser's cgroup.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

/// Allocates 64 MiB blocks and touches every page of them, without end (bounded by the
/// cgroup killing it, or by 200 blocks).
const HOG: &str = "(() => { window.hog = []; for (let i = 0; i < 200; i++) { \
     const b = new Uint8Array(64 << 20); for (let j = 0; j < b.length; j += 4096) b[j] = 1; \
     window.hog.push(b); } return window.hog.length; })()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_over_the_memory_cap_fails_its_session_and_spares_its_neighbour() {
    let _shared = shared().await;
    let gw = Gateway::start(&["--session-memory-max", "768MiB", "--pool-size", "0"]).await;
    let hog = gw.create(json!({})).await;
    let neighbour = gw.create(json!({})).await;
    let hog_id = hog["id"].as_str().expect("id").to_owned();
    assert_caps_reach_the_browser(&gw, &hog_id);
    let mut cdp = Cdp::connect(hog["websocketUrl"].as_str().expect("url")).await;
    let page = cdp.attach_first_page().await;
    let mut other = Cdp::connect(neighbour["websocketUrl"].as_str().expect("url")).await;
    let other_page = other.attach_first_page().await;

    // The evaluation never answers: the renderer (or the whole browser) is killed under it.
    let started = Instant::now();
    cdp.send_raw(
        json!({"id": 900, "method": "Runtime.evaluate", "sessionId": page,
               "params": {"expression": HOG, "returnByValue": true}})
        .to_string(),
    )
    .await;
    let (ended, _) = gw.wait_ended(&hog_id, secs(60)).await;
    let took = started.elapsed();
    assert_eq!(ended["status"], "failed", "{ended}");
    // The final record is written once the browser is reaped.
    let deadline = Instant::now() + secs(10);
    let record = loop {
        let record = usage_record(&gw.data_dir, &hog_id);
        if record.ended_at_ms.is_some() || Instant::now() > deadline {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record.status, "failed", "{record:?}");
    assert_eq!(record.reason.as_deref(), Some("memory_limit"), "{record:?}");
    assert!(
        gw.wait_for_log("over the session memory limit", Duration::from_secs(2))
            .await,
        "the gateway says why"
    );
    eprintln!("hog ended {took:?} after it began allocating");
    // Reaching 768 MiB takes the page well under a second; the cap's watch polls every
    // 250 ms. Generous for a loaded machine, still far from "never".
    assert!(took < Duration::from_secs(10), "ended only after {took:?}");

    assert_eq!(
        other.eval(&other_page, "6 * 7").await,
        42,
        "the neighbour answers"
    );
    let alive = gw.session(neighbour["id"].as_str().expect("id")).await;
    assert_eq!(alive["status"], "live");
    other.close().await;
    gw.release(neighbour["id"].as_str().expect("id")).await;
    gw.assert_clean(secs(10)).await;
}

/// The session's browser sits in a cgroup of its own (this machine has cgroup v1's memory
/// and pids hierarchies) carrying `--session-memory-max` and the default `--session-pids-max`.
fn assert_caps_reach_the_browser(gw: &Gateway, session_id: &str) {
    let pid = browser_leader(&gw.data_dir, session_id);
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let path_in = |controller: &str| {
        groups
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| path.to_owned())
            })
            .unwrap_or_else(|| panic!("no {controller} cgroup in {groups}"))
    };
    let read =
        |file: String| std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let pids = path_in("pids");
    assert!(
        pids.contains("/ingot-"),
        "the browser is in the gateway's group: {pids}"
    );
    assert_eq!(
        read(format!("/sys/fs/cgroup/pids{pids}/pids.max")).trim(),
        "2048"
    );
    let memory = path_in("memory");
    let limit: u64 = read(format!(
        "/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes"
    ))
    .trim()
    .parse()
    .expect("a number");
    assert_eq!(limit, 768 << 20, "{memory}");
}
