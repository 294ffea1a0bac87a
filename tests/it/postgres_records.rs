//! The stored words of the cluster's records in PostgreSQL: what a node writes when a session
//! ends, and what it reads back (every status and reason any version of ingot writes, told
//! in Steel's words), and that a reason no version writes reads as a crash, as before. A
//! real PostgreSQL started by the test, one real `ingot` node and real Chromium.

use serde_json::json;

use crate::common::postgres::Postgres;
use crate::common::*;

/// Every stored reason with the status it is stored with, and the status and
/// `releaseReason` a client is told.
const STORED: [(&str, &str, &str); 12] = [
    ("user_requested", "released", "user_requested"),
    ("timeout", "released", "timeout"),
    ("inactivity_timeout", "released", "inactivity_timeout"),
    ("browser_closed", "released", "browser_closed"),
    ("gateway_shutdown", "released", "timeout"),
    ("browser_crashed", "failed", "browser_crashed"),
    ("browser_unresponsive", "failed", "browser_crashed"),
    ("startup_failed", "failed", "startup_failed"),
    ("memory_limit", "failed", "browser_crashed"),
    ("node_lost", "failed", "browser_crashed"),
    ("creation_abandoned", "failed", "creation_timeout"),
    ("gateway_restart", "failed", "browser_crashed"),
];

/// Inserts an ended record of session `id` that another (gone) node wrote.
fn seed(pg: &Postgres, db: &str, id: &str, status: &str, reason: &str) {
    pg.sql(
        db,
        &format!(
            "INSERT INTO ingot_sessions (session_id, node, created_at_ms, ended_at_ms,
                checkpoint_at_ms, status, reason, billed_minutes)
             SELECT '{id}', 'gone', now_ms, now_ms, now_ms, '{status}', '{reason}', 1
             FROM (SELECT (extract(epoch FROM now()) * 1000)::bigint AS now_ms) AS t"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_word_is_written_and_read_back_in_steels_words() {
    let _shared = shared().await;
    let pg = Postgres::start();
    pg.create_database("records");
    let dir = tempfile::tempdir().expect("dir");
    let args = ["--database-url", &pg.url("records"), "--node-id", "a"];
    let node = Gateway::start_in(dir.path(), &args).await;

    // What a node writes: a live record, then its end.
    let session = node.create(json!({})).await;
    let id = session["id"].as_str().expect("id").to_owned();
    let stored = |id: &str| {
        pg.sql(
            "records",
            &format!(
                "SELECT status, coalesce(reason, '-') FROM ingot_sessions WHERE session_id = '{id}'"
            ),
        )
    };
    assert_eq!(stored(&id), "live|-");
    assert_eq!(node.session(&id).await["status"], "live");
    node.release(&id).await;
    assert_eq!(stored(&id), "released|user_requested");

    // What it reads back: every word, as another node (or an earlier version) wrote it.
    for (reason, status, steel) in STORED {
        let id = uuid::Uuid::new_v4().to_string();
        seed(&pg, "records", &id, status, reason);
        let seen = node.session(&id).await;
        assert_eq!(
            (seen["status"].as_str(), seen["releaseReason"].as_str()),
            (Some(status), Some(steel)),
            "{reason}: {seen}"
        );
    }

    // A reason no ingot writes (a newer node's): read as a crash, as before reasons were
    // typed, so the record and every list that holds it stay readable.
    let odd = uuid::Uuid::new_v4().to_string();
    seed(&pg, "records", &odd, "failed", "eaten_by_a_grue");
    let seen = node.session(&odd).await;
    assert_eq!(
        (seen["status"].as_str(), seen["releaseReason"].as_str()),
        (Some("failed"), Some("browser_crashed")),
        "{seen}"
    );
    let (code, _) = node.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(code, 200, "the other records still read");
}
