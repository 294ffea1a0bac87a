//! g. The partition soak: create / connect (one command) / release cycles through a
//! three-node cluster while the nodes are cut from the database and healed in turn. It
//! ends with no error other than the documented refusals, no browser left, and the same
//! usage on every node, equal to the database's billed minutes.
//!
//! `INGOT_PARTITION_SOAK_CYCLES` sets the number of cycles (500 by default).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::net_cluster::*;
use crate::common::exclusive;

/// Cycles run at once.
const WORKERS: usize = 2;
/// How long each node is cut from the database in its turn, and the pause between turns.
const CUT_FOR: Duration = Duration::from_secs(4);
const PAUSE: Duration = Duration::from_secs(4);

/// The outcome of each step, counted by name (`create 200`, `connect 410`, …).
type Tally = Arc<Mutex<BTreeMap<String, usize>>>;

fn count(tally: &Tally, what: String) {
    *tally.lock().unwrap().entry(what).or_default() += 1;
}

/// Whether an outcome is a success or a documented refusal.
fn documented(outcome: &str) -> bool {
    outcome.ends_with(" ok")
        || outcome.ends_with("503 node_fenced")
        || outcome.ends_with("503 database_unavailable")
        || outcome.ends_with("502 node_unreachable")
        // A session the cluster failed (its node was cut) refuses connections with 410,
        // and its client is closed with 1011.
        || outcome.starts_with("connect 410")
        || outcome == "command closed 1011"
}

/// The answer's status and error code, as an outcome.
fn outcome(step: &str, answer: &Option<(u16, Value)>) -> String {
    match answer {
        None => format!("{step} no answer"),
        Some((200, _)) => format!("{step} ok"),
        Some((status, body)) => format!(
            "{step} {status} {}",
            body["error"]["code"].as_str().unwrap_or("")
        ),
    }
}

/// One cycle through node `via`.
async fn cycle(cluster: &NetCluster, via: &str, tally: &Tally) {
    let node = cluster.node(via);
    let created = post(node, "/v1/sessions", Duration::from_secs(30)).await;
    let step = outcome("create", &created);
    count(tally, step);
    let Some((200, session)) = created else {
        return;
    };
    let id = session["id"].as_str().expect("id").to_owned();
    let url = session["websocketUrl"].as_str().expect("websocketUrl");
    count(tally, connect_and_ask(url).await);
    let released = post(
        node,
        &format!("/v1/sessions/{id}/release"),
        Duration::from_secs(30),
    )
    .await;
    count(tally, outcome("release", &released));
}

/// Connects to `url` and sends one command; the outcome.
async fn connect_and_ask(url: &str) -> String {
    match upgrade_and_keep(url).await {
        Err(outcome) => outcome,
        Ok(mut ws) => {
            let ask = json!({"id": 1, "method": "Browser.getVersion"}).to_string();
            if ws.send(Message::Text(ask.into())).await.is_err() {
                return "command send failed".into();
            }
            let answer = tokio::time::timeout(Duration::from_secs(15), async {
                while let Some(frame) = ws.next().await {
                    match frame {
                        Ok(Message::Text(t)) if t.contains("\"id\":1") => {
                            return "command ok".into();
                        }
                        Ok(Message::Close(f)) => {
                            return format!(
                                "command closed {}",
                                f.map(|f| u16::from(f.code)).unwrap_or(1006)
                            );
                        }
                        Ok(_) => {}
                        Err(e) => return format!("command error {e}"),
                    }
                }
                "command closed 1006".to_owned()
            })
            .await
            .unwrap_or_else(|_| "command no answer".into());
            let _ = ws.close(None).await;
            answer
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn upgrade_and_keep(url: &str) -> Result<Ws, String> {
    let tried = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(url),
    )
    .await;
    match tried {
        Err(_) => Err("connect no answer".into()),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(r))) => {
            let body: Value = r
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err(format!(
                "connect {} {}",
                r.status().as_u16(),
                body["error"]["code"].as_str().unwrap_or("")
            ))
        }
        Ok(Err(e)) => Err(format!("connect error {e}")),
    }
}

/// Cuts each node from the database in turn (alternately with errors and silently) until
/// `done`; returns how many cuts it made.
async fn rotate_cuts(cluster: &NetCluster, done: &tokio_util::sync::CancellationToken) -> usize {
    let mut cuts = 0;
    for turn in 0.. {
        let name = ["a", "b", "c"][turn % 3];
        let fault = if turn % 2 == 0 {
            cluster.net.cut(name, "pg")
        } else {
            cluster.net.drop_silently(name, "pg")
        };
        cuts += 1;
        let stop = tokio::select! {
            _ = done.cancelled() => true,
            _ = tokio::time::sleep(CUT_FOR) => false,
        };
        cluster.net.heal(&fault);
        if stop {
            break;
        }
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tokio::time::sleep(PAUSE) => {}
        }
    }
    cuts
}

/// g. Cycles through three nodes while each is cut from the database in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_soak_cycles_through_cuts_and_heals() {
    let _alone = exclusive().await;
    let cycles: usize = std::env::var("INGOT_PARTITION_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let Some(cluster) = NetCluster::start("part_soak", &["a", "b", "c"], &[]).await else {
        return;
    };
    let tally: Tally = Arc::default();
    let next = AtomicUsize::new(0);
    let done = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let workers = futures_util::future::join_all((0..WORKERS).map(|_| async {
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= cycles {
                return;
            }
            cycle(&cluster, ["a", "b", "c"][i % 3], &tally).await;
        }
    }));
    let (_, cuts) = tokio::join!(
        async {
            workers.await;
            done.cancel();
        },
        rotate_cuts(&cluster, &done)
    );
    let took = started.elapsed();
    cluster.net.heal_all();
    let (leaked, usage) = settle(&cluster).await;
    let tally = tally.lock().unwrap().clone();
    let errors: Vec<(&String, &usize)> = tally.iter().filter(|(k, _)| !documented(k)).collect();
    eprintln!(
        "partition soak: {cycles} cycles in {took:?} with {cuts} cuts; outcomes {tally:?}; \
         chromium left {leaked:?}; usage per node and database {usage:?}"
    );
    assert!(errors.is_empty(), "undocumented outcomes: {errors:?}");
    assert!(leaked.iter().all(|n| *n == 0), "browsers left: {leaked:?}");
    let db = usage.last().cloned().unwrap_or_default();
    assert!(usage.iter().all(|u| *u == db), "usage differs: {usage:?}");
}

/// After the soak: waits two leases, releases whatever the database still shows live,
/// and returns each node's Chromium processes, then each node's billed minutes from
/// `/v1/usage` and, last, the database's.
async fn settle(cluster: &NetCluster) -> (Vec<usize>, Vec<String>) {
    tokio::time::sleep(Duration::from_millis(LEASE_MS * 2)).await;
    let live = cluster.pg.sql(
        cluster.db,
        "SELECT session_id FROM ingot_sessions WHERE status = 'live'",
    );
    for id in live.lines().filter(|l| !l.is_empty()) {
        let _ = post(
            cluster.node("a"),
            &format!("/v1/sessions/{id}/release"),
            Duration::from_secs(30),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let leaked = loop {
        let leaked: Vec<usize> = cluster
            .nodes
            .iter()
            .map(|n| n.chromium_processes())
            .collect();
        if leaked.iter().all(|n| *n == 0) || Instant::now() > deadline {
            break leaked;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut usage = Vec::new();
    for node in &cluster.nodes {
        let answer = get(node, "/v1/usage", Duration::from_secs(5)).await;
        usage.push(
            answer
                .map(|(_, u)| u["total"]["billedMinutes"].to_string())
                .unwrap_or_else(|| "no answer".into()),
        );
    }
    usage.push(cluster.pg.sql(
        cluster.db,
        "SELECT coalesce(sum(billed_minutes), 0) FROM ingot_sessions",
    ));
    (leaked, usage)
}
