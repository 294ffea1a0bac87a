//! Billing: the usage records in SQLite, `GET /v1/usage` (JSON and CSV) checked against
//! them, and a gateway SIGKILLed mid-session whose successor closes its sessions billed up to
//! their last checkpoint.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

/// Sums of the records, in the report's shape.
fn sums(records: &[UsageRecord]) -> Value {
    let count = |status: &str| records.iter().filter(|r| r.status == status).count();
    let sum = |f: fn(&UsageRecord) -> u64| records.iter().map(f).sum::<u64>();
    json!({
        "sessions": records.len(),
        "sessionsByStatus": {
            "live": count("live"),
            "released": count("released"),
            "failed": count("failed"),
        },
        "billedMinutes": sum(|r| r.billed_minutes),
        "bytes": {"toBrowser": sum(|r| r.bytes_to_browser), "toClient": sum(|r| r.bytes_to_client)},
        "messages": {
            "toBrowser": sum(|r| r.messages_to_browser),
            "toClient": sum(|r| r.messages_to_client),
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_report_equals_the_sum_of_the_records() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let ids = three_sessions_with_some_work_two_released(&gw).await;
    let (report, records) = the_report_total_is_the_sum_of_the_records(&gw).await;
    days_add_up_to_the_total(&report);
    released_sessions_bill_what_their_session_json_says(&gw, &ids, &records).await;
    the_csv_has_the_same_figures(&gw, &report).await;
    sessions_count_in_the_range_that_holds_their_creation(&gw).await;
    bad_parameters_get_400s_that_name_them(&gw).await;
}

/// Three sessions with 3, 1 and 0 evaluations; the first two released, the third still
/// live (the report includes it with its figures so far). Returns their ids.
async fn three_sessions_with_some_work_two_released(gw: &Gateway) -> Vec<String> {
    let mut ids = Vec::new();
    for work in [3, 1, 0] {
        let session = gw.create(json!({})).await;
        let id = session["id"].as_str().unwrap().to_owned();
        if work > 0 {
            let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
            let page = cdp.attach_first_page().await;
            for i in 0..work {
                cdp.eval(&page, &format!("'{i}'.repeat(1000)")).await;
            }
            cdp.close().await;
        }
        ids.push(id);
    }
    gw.release(&ids[0]).await;
    gw.release(&ids[1]).await;
    ids
}

/// Returns the report and the records.
async fn the_report_total_is_the_sum_of_the_records(gw: &Gateway) -> (Value, Vec<UsageRecord>) {
    let (status, report) = gw.get("/v1/usage").await;
    assert_eq!(status, 200, "{report}");
    let records = usage_records(&gw.data_dir);
    assert_eq!(records.len(), 3);
    assert_eq!(report["total"], sums(&records), "report: {report}");
    assert_eq!(report["total"]["sessions"], 3);
    assert_eq!(report["total"]["sessionsByStatus"]["live"], 1);
    assert_eq!(report["total"]["billedMinutes"], 3);
    assert!(report["total"]["bytes"]["toClient"].as_u64().unwrap() > 4000);
    assert!(
        records[0].bytes_to_client > records[1].bytes_to_client,
        "more work, more bytes"
    );
    assert_eq!(records[2].bytes_to_browser, 0);
    (report, records)
}

fn days_add_up_to_the_total(report: &Value) {
    let days = report["days"].as_array().unwrap();
    assert!(!days.is_empty());
    let day_sessions: u64 = days.iter().map(|d| d["sessions"].as_u64().unwrap()).sum();
    let day_minutes: u64 = days
        .iter()
        .map(|d| d["billedMinutes"].as_u64().unwrap())
        .sum();
    assert_eq!((day_sessions, day_minutes), (3, 3));
}

async fn released_sessions_bill_what_their_session_json_says(
    gw: &Gateway,
    ids: &[String],
    records: &[UsageRecord],
) {
    for (id, record) in ids.iter().zip(records).take(2) {
        let session = gw.session(id).await;
        assert_eq!(session["creditsUsed"].as_u64(), Some(record.billed_minutes));
        assert_eq!(record.status, "released");
        let ended = record.ended_at_ms.expect("ended");
        assert!(ended >= record.created_at_ms);
        let expected = ((ended - record.created_at_ms) as u64)
            .div_ceil(60_000)
            .max(1);
        assert_eq!(record.billed_minutes, expected);
    }
}

/// CSV: the same figures, one row per day and a total row.
async fn the_csv_has_the_same_figures(gw: &Gateway, report: &Value) {
    let days = report["days"].as_array().unwrap();
    let csv = gw
        .http
        .get(gw.url("/v1/usage?format=csv"))
        .send()
        .await
        .expect("GET csv");
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().await.unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "date",
            "sessions",
            "live",
            "released",
            "failed",
            "billed_minutes",
            "bytes_to_browser",
            "bytes_to_client",
            "messages_to_browser",
            "messages_to_client"
        ]
    );
    assert_eq!(rows.len(), days.len() + 2);
    let total = rows.last().unwrap();
    let all = usage_records(&gw.data_dir);
    let expected = sums(&all);
    assert_eq!(total[0], "total");
    assert_eq!(total[1], expected["sessions"].to_string());
    assert_eq!(total[5], expected["billedMinutes"].to_string());
    assert_eq!(total[7], expected["bytes"]["toClient"].to_string());
}

/// Ranges: sessions count in the range that holds their creation time; another tenant has
/// none.
async fn sessions_count_in_the_range_that_holds_their_creation(gw: &Gateway) {
    let (status, later) = gw
        .get("/v1/usage?from=2099-01-01T00:00:00Z&to=2099-01-02T00:00:00Z")
        .await;
    assert_eq!(status, 200);
    assert_eq!(later["total"]["sessions"], 0);
    assert_eq!(later["days"], json!([]));
    let (status, with_offset) = gw
        .get("/v1/usage?from=2000-01-01T01:00:00+01:00&to=2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "an unencoded + in an offset is accepted");
    assert_eq!(with_offset["total"]["sessions"], 3);
    assert_eq!(with_offset["from"], "2000-01-01T00:00:00Z");
    let (_, nobody) = gw.get("/v1/usage?tenant=someone-else").await;
    assert_eq!(nobody["total"]["sessions"], 0);
}

/// Bad input: JSON 400s that name the parameter.
async fn bad_parameters_get_400s_that_name_them(gw: &Gateway) {
    for (query, names) in [
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        (
            "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "earlier",
        ),
        ("format=xml", "format"),
    ] {
        let (status, body) = gw.get(&format!("/v1/usage?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(names),
            "{query}: {body}"
        );
    }
}

/// SIGKILL the gateway while two sessions run: one past its first minute (so it has been
/// checkpointed with two minutes and its traffic so far), one still in its first. The next
/// start closes both as failed/gateway_restart, billed up to their last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_session_bills_up_to_the_last_checkpoint() {
    let _shared = shared().await;
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().to_path_buf();
    let gw = Gateway::start_in(&data_dir, &[]).await;

    let long = gw.create(json!({"timeout": 600_000})).await;
    let long_id = long["id"].as_str().unwrap().to_owned();
    let created = Instant::now();
    let mut cdp = Cdp::connect(long["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    cdp.eval(&page, "'before'.repeat(100)").await;

    let (short_id, checkpointed) = the_long_session_is_checkpointed_as_its_second_minute_starts(
        &gw, &data_dir, &long_id, created,
    )
    .await;
    the_gateway_is_sigkilled_after_more_traffic(gw, cdp, &page, &data_dir).await;
    let gw = the_next_start_closes_both_billed_up_to_their_checkpoint(
        &data_dir,
        &long_id,
        &short_id,
        &checkpointed,
    )
    .await;
    the_new_run_reports_and_counts_them_and_nothing_is_left(&gw).await;
    a_restart_with_nothing_left_live_closes_nothing_more(gw, &data_dir).await;
}

/// Waits for the start of the second minute, and its checkpoint; a second session starts
/// meanwhile. Returns the second session's id and the long one's checkpointed record.
async fn the_long_session_is_checkpointed_as_its_second_minute_starts(
    gw: &Gateway,
    data_dir: &Path,
    long_id: &str,
    created: Instant,
) -> (String, UsageRecord) {
    tokio::time::sleep_until((created + Duration::from_secs(58)).into()).await;
    let short = gw.create(json!({"timeout": 600_000})).await;
    let short_id = short["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + secs(10);
    let checkpointed = loop {
        let r = usage_record(data_dir, long_id);
        if r.billed_minutes == 2 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint at the minute: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(checkpointed.checkpoint_at_ms - checkpointed.created_at_ms > 60_000);
    assert!(checkpointed.bytes_to_client > 600, "{checkpointed:?}");
    // The counter rose as the second minute started: two minutes for one, one for the other.
    assert_eq!(
        metric(&gw.scrape().await, "ingot_billed_minutes_total", &[]),
        3.0
    );
    (short_id, checkpointed)
}

/// Traffic after the checkpoint is the part a SIGKILL may lose. The records stay live.
async fn the_gateway_is_sigkilled_after_more_traffic(
    mut gw: Gateway,
    mut cdp: Cdp,
    page: &str,
    data_dir: &Path,
) {
    cdp.eval(page, "'after'.repeat(10000)").await;

    gw.signal(libc::SIGKILL);
    let exit = gw.wait_exit(secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&exit),
        Some(9)
    );
    drop(cdp);
    let before_restart = usage_records(data_dir);
    assert!(before_restart.iter().all(|r| r.status == "live"));
}

/// Returns the new run.
async fn the_next_start_closes_both_billed_up_to_their_checkpoint(
    data_dir: &Path,
    long_id: &str,
    short_id: &str,
    checkpointed: &UsageRecord,
) -> Gateway {
    let gw = Gateway::start_in(data_dir, &[]).await;
    let long = usage_record(data_dir, long_id);
    assert_eq!(long.status, "failed");
    assert_eq!(long.reason.as_deref(), Some("gateway_restart"));
    assert_eq!(long.billed_minutes, 2, "both started minutes are billed");
    assert_eq!(long.ended_at_ms, Some(checkpointed.checkpoint_at_ms));
    assert_eq!(long.bytes_to_client, checkpointed.bytes_to_client);
    let short = usage_record(data_dir, short_id);
    assert_eq!(short.status, "failed");
    assert_eq!(short.reason.as_deref(), Some("gateway_restart"));
    assert_eq!(short.billed_minutes, 1);
    assert_eq!(short.ended_at_ms, Some(short.created_at_ms));
    gw
}

/// The new run reports them, counts them, and left nothing of the old browsers behind.
async fn the_new_run_reports_and_counts_them_and_nothing_is_left(gw: &Gateway) {
    let (_, report) = gw.get("/v1/usage").await;
    assert_eq!(report["total"]["sessionsByStatus"]["failed"], 2);
    assert_eq!(report["total"]["billedMinutes"], 3);
    let scrape = gw.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            "ingot_sessions_ended_total",
            &[("status", "failed"), ("reason", "gateway_restart")]
        ),
        2.0
    );
    gw.assert_clean(secs(10)).await;
}

/// A restart with nothing left live closes nothing more.
async fn a_restart_with_nothing_left_live_closes_nothing_more(gw: Gateway, data_dir: &Path) {
    drop(gw);
    let gw = Gateway::start_in(data_dir, &[]).await;
    let scrape = gw.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            "ingot_sessions_ended_total",
            &[("status", "failed"), ("reason", "gateway_restart")]
        ),
        0.0
    );
    assert_eq!(usage_records(data_dir).len(), 2);
}
