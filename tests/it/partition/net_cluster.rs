//! A cluster for one partition test: PostgreSQL in namespace `pg` and an `ingot` node in
//! each of the namespaces `a`, `b`, `c`… of one [`Net`], with a lease of [`LEASE_MS`]; and
//! what the tests read from it: the database (through PostgreSQL's unix socket, which
//! works while the network is cut), each node's view of a session, its metrics, and
//! WebSocket upgrades refused or accepted.
//!
//! Dropping it heals the network first (so the nodes can stop cleanly), then stops the
//! nodes, then PostgreSQL, then removes the network and whatever still runs in it.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite;

use crate::common::Gateway;
use crate::common::netns::Net;
use crate::common::postgres::Postgres;

/// Every node's lease.
pub const LEASE_MS: u64 = 3_000;
/// The port every node listens on, in its own namespace.
pub const PORT: u16 = 3_000;

/// PostgreSQL and nodes in namespaces; see the module's doc. Fields drop in order.
pub struct NetCluster {
    pub nodes: Vec<Gateway>,
    pub pg: Postgres,
    _dirs: Vec<tempfile::TempDir>,
    pub net: Net,
    pub db: &'static str,
}

impl NetCluster {
    /// Starts PostgreSQL and nodes named `nodes`, each with `extra` flags, and waits until
    /// every node sees all of them. `None` when this machine cannot make namespaces.
    pub async fn start(db: &'static str, nodes: &[&str], extra: &[&str]) -> Option<NetCluster> {
        let mut members = vec!["pg"];
        members.extend_from_slice(nodes);
        let net = Net::create(&members)?;
        let pg = Postgres::start_in(&net.ns("pg"), net.ip("pg"));
        pg.create_database(db);
        let mut cluster = NetCluster {
            nodes: Vec::new(),
            pg,
            _dirs: Vec::new(),
            net,
            db,
        };
        for name in nodes {
            let dir = tempfile::tempdir().expect("data dir");
            let node = cluster.start_node(name, dir.path(), extra).await;
            cluster.nodes.push(node);
            cluster._dirs.push(dir);
        }
        cluster.wait_until_all_see(nodes.len()).await;
        Some(cluster)
    }

    async fn start_node(&self, name: &str, dir: &std::path::Path, extra: &[&str]) -> Gateway {
        let ip = self.net.ip(name);
        let advertise = format!("http://{ip}:{PORT}");
        let database = self.pg.url(self.db);
        let lease = LEASE_MS.to_string();
        let mut args = vec![
            "--advertise-url",
            &advertise,
            "--database-url",
            &database,
            "--node-id",
            name,
            "--node-lease-ms",
            &lease,
            "--insecure-no-auth",
        ];
        args.extend_from_slice(extra);
        Gateway::start_in_netns(&self.net.ns(name), ip, PORT, dir, &args).await
    }

    /// Waits until every node counts `n` live nodes.
    pub async fn wait_until_all_see(&self, n: usize) {
        for node in &self.nodes {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let seen = gauge(node, "ingot_cluster_nodes", &[]).await;
                if seen == Some(n as f64) {
                    break;
                }
                assert!(Instant::now() < deadline, "nodes never met: {seen:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &Gateway {
        let i = self
            .nodes
            .iter()
            .position(|n| n.host == self.net.ip(name).to_string());
        &self.nodes[i.unwrap_or_else(|| panic!("no node {name}"))]
    }

    /// The nodes' names, in order.
    pub fn names(&self) -> Vec<String> {
        let names = ["a", "b", "c", "d", "e"];
        names[..self.nodes.len()]
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    /// A client of the database through its unix socket.
    pub async fn db_client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(self.pg.socket_dir())
            .port(self.pg.port)
            .user("ingot")
            .dbname(self.db)
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect to the database through its socket");
        tokio::spawn(connection);
        client
    }

    /// `(node, status, reason, billed_minutes)` of session `id`'s newest record.
    pub fn row(&self, id: &str) -> (String, String, String, i64) {
        let line = self.pg.sql(
            self.db,
            &format!(
                "SELECT node, status, coalesce(reason, ''), billed_minutes FROM ingot_sessions
                 WHERE session_id = '{id}' ORDER BY record_id DESC LIMIT 1"
            ),
        );
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 4, "no record of {id}: {line:?}");
        (
            f[0].to_owned(),
            f[1].to_owned(),
            f[2].to_owned(),
            f[3].parse().expect("minutes"),
        )
    }

    /// The URL a client uses for session `id` through node `via`.
    pub fn ws_url(&self, via: &str, id: &str) -> String {
        format!("ws://{}:{PORT}/?sessionId={id}", self.net.ip(via))
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        self.net.heal_all();
    }
}

/// A GET on `node` with a deadline: `(status, JSON body)`, or `None` when no answer came.
pub async fn get(node: &Gateway, path: &str, within: Duration) -> Option<(u16, Value)> {
    answer(node.http.get(node.url(path)), within).await
}

/// A POST of `{}` on `node` with a deadline, as [`get`].
pub async fn post(node: &Gateway, path: &str, within: Duration) -> Option<(u16, Value)> {
    let request = node
        .http
        .post(node.url(path))
        .header("content-type", "application/json")
        .body("{}");
    answer(request, within).await
}

/// Sends `request` with a deadline: `(status, JSON body)`, or `None` when no answer came.
async fn answer(request: reqwest::RequestBuilder, within: Duration) -> Option<(u16, Value)> {
    let r = request.timeout(within).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

/// Node `node`'s metrics, or `None` when it does not answer within 2 s.
pub async fn scrape(node: &Gateway) -> Option<prometheus_parse::Scrape> {
    let r = node
        .http
        .get(node.url("/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let text = r.text().await.ok()?;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()
}

/// The value of one counter or gauge sample of `node`, if it answers and has it.
pub async fn gauge(node: &Gateway, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    crate::common::try_metric(&scrape(node).await?, name, labels)
}

/// What a fresh WebSocket upgrade got.
#[derive(Debug, Clone, PartialEq)]
pub enum Upgrade {
    Accepted,
    /// Refused before the upgrade: status, `error.code`, `Retry-After`.
    Refused(u16, String, Option<String>),
    /// No answer within the deadline.
    NoAnswer,
    /// The connection failed otherwise.
    Failed(String),
}

impl Upgrade {
    /// The refusal's status, if it was refused.
    pub fn status(&self) -> Option<u16> {
        match self {
            Upgrade::Refused(status, ..) => Some(*status),
            _ => None,
        }
    }
}

/// Tries a fresh WebSocket upgrade to `url`, giving up after `within`.
pub async fn upgrade(url: &str, within: Duration) -> Upgrade {
    let tried = tokio::time::timeout(within, tokio_tungstenite::connect_async(url)).await;
    match tried {
        Err(_) => Upgrade::NoAnswer,
        Ok(Ok((ws, _))) => {
            drop(ws);
            Upgrade::Accepted
        }
        Ok(Err(tungstenite::Error::Http(response))) => {
            let body: Value = response
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            let retry = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Upgrade::Refused(
                response.status().as_u16(),
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
                retry,
            )
        }
        Ok(Err(e)) => Upgrade::Failed(e.to_string()),
    }
}

/// Milliseconds from `from` to `to`, negative when `to` is earlier.
pub fn ms_between(from: Instant, to: Instant) -> i64 {
    if to >= from {
        (to - from).as_millis() as i64
    } else {
        -((from - to).as_millis() as i64)
    }
}

/// Sessions whose record changed: id, when it was seen, status, reason.
type Changes = std::sync::Arc<std::sync::Mutex<Vec<(String, Instant, String, String)>>>;

/// The first time each watched session's newest record read other than `live`.
pub struct StatusWatch {
    changed: Changes,
    task: tokio::task::JoinHandle<()>,
}

impl NetCluster {
    /// Polls the records of `ids` every 50 ms, through the unix socket, noting when each
    /// first reads other than `live` (and what it read).
    pub async fn watch(&self, ids: &[String]) -> StatusWatch {
        let client = self.db_client().await;
        let ids = ids.to_vec();
        let changed: Changes = std::sync::Arc::default();
        let sink = changed.clone();
        let task = tokio::spawn(async move {
            let sql = "SELECT status, coalesce(reason, '') FROM ingot_sessions
                       WHERE session_id = $1 ORDER BY record_id DESC LIMIT 1";
            loop {
                for id in &ids {
                    if sink.lock().unwrap().iter().any(|(seen, ..)| seen == id) {
                        continue;
                    }
                    let Ok(row) = client.query_one(sql, &[id]).await else {
                        continue;
                    };
                    let (status, reason): (String, String) = (row.get(0), row.get(1));
                    if status != "live" {
                        sink.lock()
                            .unwrap()
                            .push((id.clone(), Instant::now(), status, reason));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        StatusWatch { changed, task }
    }
}

impl StatusWatch {
    /// When session `id`'s record first read other than `live`, and its status and reason.
    pub fn changed(&self, id: &str) -> Option<(Instant, String, String)> {
        let changed = self.changed.lock().unwrap();
        changed
            .iter()
            .find(|(seen, ..)| seen == id)
            .map(|(_, at, status, reason)| (*at, status.clone(), reason.clone()))
    }

    /// Every change seen, as `id: status/reason`.
    pub fn all(&self) -> Vec<String> {
        let changed = self.changed.lock().unwrap();
        changed
            .iter()
            .map(|(id, _, status, reason)| format!("{id}: {status}/{reason}"))
            .collect()
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
