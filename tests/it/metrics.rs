//! `/metrics` after a scripted workload, read with a Prometheus text parser: exact session
//! counts by status and reason, traffic equal to the usage records, histograms with samples,
//! gauges that rise while sessions run and fall back after. Also the health endpoints and the
//! drain on SIGTERM.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

/// Waits until the sampled gauges (every 2 s) satisfy `ok`, and returns that scrape.
async fn scrape_until(
    gw: &Gateway,
    within: Duration,
    ok: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let deadline = Instant::now() + within;
    loop {
        let scrape = gw.scrape().await;
        if ok(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never reached the expected state"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn histogram_count(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    metric(scrape, &format!("{name}_count"), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_a_scripted_workload() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let released_id = a_working_session_is_measured_while_it_runs_then_released(&gw).await;
    let timed_out_id = a_session_times_out(&gw).await;
    let crashed_id = a_session_crashes(&gw).await;
    let after = sessions_are_counted_by_status_and_reason_with_histograms(&gw).await;
    proxied_traffic_equals_the_usage_record(&gw, &after, &released_id);
    every_series_is_ingots_and_no_label_is_a_session_id(
        &after,
        [&released_id, &timed_out_id, &crashed_id],
    );
}

/// Released: one session with a client that does some work. While it runs, a client is
/// attached and its browser is measured (sampled every 2 s). Returns its id.
async fn a_working_session_is_measured_while_it_runs_then_released(gw: &Gateway) -> String {
    let released = gw.create(json!({})).await;
    let released_id = released["id"].as_str().unwrap().to_owned();
    let mut cdp = Cdp::connect(released["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    let answer = cdp.eval(&page, "'x'.repeat(5000)").await;
    assert_eq!(answer.as_str().map(str::len), Some(5000));

    let live = scrape_until(gw, secs(10), |s| {
        try_metric(s, "ingot_chromium_resident_memory_bytes", &[]).unwrap_or(0.0) > 50e6
    })
    .await;
    assert_eq!(metric(&live, "ingot_sessions_live", &[]), 1.0);
    assert_eq!(metric(&live, "ingot_client_connections", &[]), 1.0);
    assert!(metric(&live, "ingot_chromium_processes", &[]) >= 2.0);
    assert_eq!(metric(&live, "ingot_billed_minutes_total", &[]), 1.0);

    cdp.close().await;
    gw.release(&released_id).await;
    released_id
}

/// Returns its id.
async fn a_session_times_out(gw: &Gateway) -> String {
    let timed_out = gw.create(json!({"timeout": 1000})).await;
    let timed_out_id = timed_out["id"].as_str().unwrap().to_owned();
    let (s, _) = gw.wait_ended(&timed_out_id, secs(10)).await;
    assert_eq!(s["releaseReason"], "timeout");
    timed_out_id
}

/// Crashed: the browser's whole process group is killed. Returns its id.
async fn a_session_crashes(gw: &Gateway) -> String {
    let crashed = gw.create(json!({})).await;
    let crashed_id = crashed["id"].as_str().unwrap().to_owned();
    kill_group(browser_leader(&gw.data_dir, &crashed_id), 9);
    let (s, _) = gw.wait_ended(&crashed_id, secs(10)).await;
    assert_eq!(s["status"], "failed");
    crashed_id
}

/// Once no browser and no client is left: one session ended per status and reason of the
/// workload, none of the others, and histograms with its samples. Returns that scrape.
async fn sessions_are_counted_by_status_and_reason_with_histograms(
    gw: &Gateway,
) -> prometheus_parse::Scrape {
    let after = scrape_until(gw, secs(10), |s| {
        try_metric(s, "ingot_chromium_processes", &[]) == Some(0.0)
            && try_metric(s, "ingot_client_connections", &[]) == Some(0.0)
    })
    .await;
    let ended = |status, reason| {
        metric(
            &after,
            "ingot_sessions_ended_total",
            &[("status", status), ("reason", reason)],
        )
    };
    assert_eq!(metric(&after, "ingot_sessions_created_total", &[]), 3.0);
    assert_eq!(ended("released", "user_requested"), 1.0);
    assert_eq!(ended("released", "timeout"), 1.0);
    assert_eq!(ended("failed", "browser_crashed"), 1.0);
    for (status, reason) in [
        ("released", "browser_closed"),
        ("released", "gateway_shutdown"),
        ("failed", "gateway_restart"),
        ("failed", "startup_failed"),
        ("failed", "memory_limit"),
    ] {
        assert_eq!(ended(status, reason), 0.0, "{status}/{reason}");
    }
    assert_eq!(metric(&after, "ingot_sessions_live", &[]), 0.0);
    assert_eq!(metric(&after, "ingot_billed_minutes_total", &[]), 3.0);
    let (_, ready) = gw.get("/readyz").await;
    assert_eq!(
        metric(&after, "ingot_sessions_max", &[]),
        ready["maxSessions"].as_f64().unwrap()
    );
    assert_eq!(
        histogram_count(&after, "ingot_session_duration_seconds"),
        3.0
    );
    assert_eq!(
        histogram_count(&after, "ingot_session_create_to_ready_seconds"),
        3.0
    );
    // The three sessions plus the start-up probe.
    assert_eq!(histogram_count(&after, "ingot_browser_launch_seconds"), 4.0);
    let duration_sum = metric(&after, "ingot_session_duration_seconds_sum", &[]);
    assert!(duration_sum > 1.0, "the timed-out session alone lasted 1 s");
    assert!(metric(&after, "ingot_process_resident_memory_bytes", &[]) > 1e6);
    assert!(metric(&after, "ingot_process_open_fds", &[]) > 0.0);
    after
}

/// Proxied traffic: every byte is in the released session's usage record.
fn proxied_traffic_equals_the_usage_record(
    gw: &Gateway,
    after: &prometheus_parse::Scrape,
    released_id: &str,
) {
    let records = usage_records(&gw.data_dir);
    assert_eq!(records.len(), 3);
    let record = usage_record(&gw.data_dir, released_id);
    for direction in ["to_browser", "to_client"] {
        let bytes = metric(after, "ingot_cdp_bytes_total", &[("direction", direction)]);
        let messages = metric(
            after,
            "ingot_cdp_messages_total",
            &[("direction", direction)],
        );
        let (db_bytes, db_messages) = if direction == "to_browser" {
            (record.bytes_to_browser, record.messages_to_browser)
        } else {
            (record.bytes_to_client, record.messages_to_client)
        };
        assert!(bytes > 0.0 && messages > 0.0, "{direction}");
        assert_eq!(bytes, db_bytes as f64, "{direction} bytes");
        assert_eq!(messages, db_messages as f64, "{direction} messages");
    }
    assert!(
        record.bytes_to_client > 5000,
        "the 5000-character answer went to the client"
    );
}

/// Naming rules: every series is ingot's, and no label value is a session id.
fn every_series_is_ingots_and_no_label_is_a_session_id(
    after: &prometheus_parse::Scrape,
    ids: [&String; 3],
) {
    for sample in &after.samples {
        assert!(
            sample.metric.starts_with("ingot_"),
            "{} is not prefixed",
            sample.metric
        );
        for id in ids {
            assert!(
                !format!("{:?}", sample.labels).contains(id.as_str()),
                "{} carries a session id",
                sample.metric
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_capacity_and_answers_any_host() {
    let _shared = shared().await;
    let gw = Gateway::start(&["--max-sessions", "1"]).await;
    let (status, body) = gw.get("/healthz").await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
    assert_eq!(body["sandbox"]["mode"], "confined", "{body}");
    let (status, body) = gw.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");

    let session = gw.create(json!({})).await;
    let (status, body) = gw.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["reason"], "at_capacity");
    gw.release(session["id"].as_str().unwrap()).await;
    let (status, _) = gw.get("/readyz").await;
    assert_eq!(status, 200);

    // Probes and scrapers use pod IPs or service names; the API still refuses those names.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = gw
            .http
            .get(gw.url(path))
            .header("host", "ingot.monitoring.svc:3000")
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = gw
        .http
        .get(gw.url("/v1/sessions"))
        .header("host", "ingot.monitoring.svc:3000")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_chromium_cannot_start() {
    let _shared = shared().await;
    let gw = Gateway::start(&["--engine", "chromium", "--chromium", "/bin/false"]).await;
    let (status, body) = gw.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "chromium_unavailable");
    assert!(
        body["message"].as_str().unwrap().contains("exited"),
        "{body}"
    );
    let (status, _) = gw.get("/healthz").await;
    assert_eq!(status, 200, "alive, just not ready");
    let (status, body) = gw.post("/v1/sessions", json!({})).await;
    assert_eq!(status, 503, "{body}");
    let scrape = gw.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            "ingot_session_create_errors_total",
            &[("reason", "browser_start_failed")]
        ),
        1.0
    );
    assert_eq!(metric(&scrape, "ingot_sessions_created_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_sessions_then_exits() {
    let _shared = shared().await;
    let mut gw = Gateway::start(&["--shutdown-drain-ms", "30000"]).await;
    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().unwrap().to_owned();
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;

    gw.signal(libc::SIGTERM);
    assert!(
        gw.wait_for_log("draining", secs(5)).await,
        "{}",
        gw.log_text()
    );
    let (status, body) = gw.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "shutting_down");
    let (status, body) = gw.post("/v1/sessions", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down");
    // The live session keeps working while the gateway drains.
    assert_eq!(cdp.eval(&page, "6 * 7").await, json!(42));

    let started = Instant::now();
    gw.release(&id).await;
    let exit = gw.wait_exit(secs(20));
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < secs(10),
        "exits once the last session is gone, not at the end of the drain"
    );
    let record = usage_record(&gw.data_dir, &id);
    assert_eq!(record.status, "released");
    assert_eq!(record.reason.as_deref(), Some("user_requested"));
    gw.assert_clean(secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain() {
    let _shared = shared().await;
    let mut gw = Gateway::start(&["--shutdown-drain-ms", "600000"]).await;
    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().unwrap().to_owned();
    gw.signal(libc::SIGTERM);
    assert!(
        gw.wait_for_log("draining", secs(5)).await,
        "{}",
        gw.log_text()
    );
    gw.signal(libc::SIGTERM);
    let exit = gw.wait_exit(secs(20));
    assert!(exit.success(), "{exit:?}");
    let record = usage_record(&gw.data_dir, &id);
    assert_eq!(record.status, "released");
    assert_eq!(record.reason.as_deref(), Some("gateway_shutdown"));
    gw.assert_clean(secs(5)).await;
}

/// Every histogram is exported from start-up with zero counts (before its first sample),
/// so the dashboard panels that read them show zero rather than "No data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_are_exported_at_zero_from_start_up() {
    let _shared = shared().await;
    // No browser starts, so nothing records a sample.
    let gw = Gateway::start(&["--engine", "chromium", "--chromium", "/bin/false"]).await;
    let text = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    for name in [
        "ingot_admission_wait_seconds",
        "ingot_session_duration_seconds",
        "ingot_browser_launch_seconds",
        "ingot_session_create_to_ready_seconds",
    ] {
        for line in [
            format!("# TYPE {name} histogram"),
            format!("{name}_bucket{{le=\"+Inf\"}} 0"),
            format!("{name}_sum 0"),
            format!("{name}_count 0"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
