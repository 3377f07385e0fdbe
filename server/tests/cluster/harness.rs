//! A private Redis Cluster for tests: three masters and three replicas, each a `redis-server`
//! child on free ports in a temporary directory, killed when dropped. The harness speaks to each
//! node on its own (node-local commands: `CLUSTER INFO`, `CLUSTER NODES`, `CLUSTER KEYSLOT`),
//! never through a cluster client.

use courier::embedded_redis::free_port;
use std::{collections::HashSet, path::Path, process::Stdio, time::Duration};
use tokio::process::{Child, Command};

/// How many nodes the cluster has: three masters, each with one replica.
const NODES: usize = 6;

/// How long a node may stay silent before the others fail it over. Short, so a test's failover
/// takes seconds; long enough that a busy 2-core machine does not fail a live node.
const NODE_TIMEOUT_MS: u64 = 2000;

/// How long the cluster may take to form, or to fail a master over.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    /// Its cluster bus's port.
    bus: u16,
    /// The running process; `None` once killed.
    process: Option<Child>,
}

/// A running cluster of three masters and three replicas on 127.0.0.1, every slot served.
pub struct TestCluster {
    nodes: Vec<Node>,
    /// The masters once the cluster formed, by port.
    masters: Vec<u16>,
    // Dropped after the nodes: their data and logs live in it.
    _dir: tempfile::TempDir,
}

/// A node as another node sees it: one line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeView {
    port: u16,
    flags: Vec<String>,
    /// The slot ranges it serves, inclusive (only a master serves any).
    slots: Vec<(u16, u16)>,
}

impl NodeView {
    /// Parses `<id> <ip:port@bus[,hostname]> <flags> <master> <ping> <pong> <epoch> <link>
    /// <slot or range>…`; a bracketed slot is one being moved, served by no one yet.
    fn parse(line: &str) -> Option<NodeView> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let address = fields.get(1)?.split(['@', ',']).next()?;
        let port = address.rsplit(':').next()?.parse().ok()?;
        let flags = fields.get(2)?.split(',').map(str::to_string).collect();
        let slots = fields
            .iter()
            .skip(8)
            .filter(|field| !field.starts_with('['))
            .filter_map(|field| match field.split_once('-') {
                Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
                None => field.parse().ok().map(|slot| (slot, slot)),
            })
            .collect();
        Some(NodeView { port, flags, slots })
    }

    /// Whether it is a master that no node has flagged as failing.
    fn is_healthy_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master") && !self.flags.iter().any(|f| f.starts_with("fail"))
    }

    /// Whether it serves `slot`.
    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(first, last)| (first..=last).contains(&slot))
    }
}

/// What one node says of the cluster while the harness waits for it to settle.
struct Sighting {
    port: u16,
    /// `cluster_state:…` from its `CLUSTER INFO`, or why it did not answer.
    state: String,
    /// The port of the master it sees serving the slot asked about, if any.
    master: Option<u16>,
}

impl std::fmt::Debug for Sighting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let master = self.master.map_or("no master".to_string(), |port| format!("master on {port}"));
        write!(f, "node {} says {}, {master}", self.port, self.state)
    }
}

impl TestCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create … --cluster-replicas 1`,
    /// and waits until every node sees every slot served, six nodes, and its master linked.
    pub async fn start() -> TestCluster {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut taken = HashSet::new();
        let mut free = || loop {
            let port = free_port().expect("a free port");
            if taken.insert(port) {
                return port;
            }
        };
        let mut nodes = Vec::new();
        for _ in 0..NODES {
            let (port, bus) = (free(), free());
            nodes.push(Node {
                port,
                bus,
                process: Some(redis_server(port, bus, &dir.path().join(port.to_string()))),
            });
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        for &port in &ports {
            until(SETTLE_LIMIT, || async move { query::<String>(port, &["PING"]).await.ok() })
                .await
                .unwrap_or_else(|| panic!("the redis-server on {port} never answered"));
        }

        let addresses = ports.iter().map(|port| format!("127.0.0.1:{port}"));
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );

        let mut cluster = TestCluster { nodes, masters: Vec::new(), _dir: dir };
        let ready = until(SETTLE_LIMIT, || {
            let ports = ports.clone();
            async move {
                for port in ports {
                    let info = query::<String>(port, &["CLUSTER", "INFO"]).await.ok()?;
                    let lines: HashSet<&str> = info.lines().map(str::trim).collect();
                    let whole = ["cluster_state:ok", "cluster_slots_assigned:16384", "cluster_known_nodes:6"];
                    if !whole.iter().all(|line| lines.contains(line)) {
                        return None;
                    }
                    let replication = query::<String>(port, &["INFO", "replication"]).await.ok()?;
                    let replica = replication.lines().any(|l| l.trim() == "role:slave");
                    if replica && !replication.lines().any(|l| l.trim() == "master_link_status:up") {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
        assert!(ready.is_some(), "the cluster on {ports:?} did not form within {SETTLE_LIMIT:?}");
        let views = cluster.views_from(ports[0]).await.expect("the first node lists the cluster");
        cluster.masters =
            views.iter().filter(|v| v.is_healthy_master() && !v.slots.is_empty()).map(|v| v.port).collect();
        cluster.masters.sort_unstable();
        assert_eq!(cluster.masters.len(), 3, "three masters: {views:?}");
        cluster
    }

    /// The masters' urls as they were once the cluster formed, comma-separated: a
    /// `COURIER_REDIS_URL` for cluster mode.
    pub fn seed_urls(&self) -> String {
        self.masters.iter().map(|port| format!("redis://127.0.0.1:{port}")).collect::<Vec<_>>().join(",")
    }

    /// The slot of `key` (by its hash tag, if it has one), as a node computes it.
    pub async fn slot(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        query(port, &["CLUSTER", "KEYSLOT", key])
            .await
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT on {port}: {e}"))
    }

    /// The port of the master serving `key`'s slot, on which every live node agrees.
    pub async fn master_for_key(&self, key: &str) -> u16 {
        let slot = self.slot(key).await;
        let seen = self.sightings(slot).await;
        match seen.first().and_then(|s| s.master) {
            Some(master) if seen.iter().all(|s| s.master == Some(master)) => master,
            _ => panic!("the nodes do not agree on the master of slot {slot} ({key}): {seen:?}"),
        }
    }

    /// Kills the node on `port` with SIGKILL, as a crash would, and reaps it.
    pub async fn kill_node(&mut self, port: u16) {
        let node =
            self.nodes.iter_mut().find(|n| n.port == port).unwrap_or_else(|| panic!("no node on {port}"));
        let mut process =
            node.process.take().unwrap_or_else(|| panic!("the node on {port} was killed already"));
        // tokio's `start_kill` is SIGKILL on Unix.
        process.start_kill().expect("the node can be killed");
        process.wait().await.expect("the killed node is reaped");
    }

    /// Starts the node on `port` again, killed before, as an operator brings a failed server
    /// back: with its own `nodes.conf`, it rejoins as a replica of the master that replaced it.
    /// Returns once that master sees it as a replica in sync.
    pub async fn restart_node(&mut self, port: u16, master: u16) {
        let node =
            self.nodes.iter_mut().find(|n| n.port == port).unwrap_or_else(|| panic!("no node on {port}"));
        assert!(node.process.is_none(), "the node on {port} is running");
        node.process = Some(redis_server(port, node.bus, &self._dir.path().join(port.to_string())));
        let in_sync = until(SETTLE_LIMIT, || async move {
            let info: String = query(master, &["INFO", "replication"]).await.ok()?;
            let line = format!("port={port},state=online");
            info.contains(&line).then_some(())
        })
        .await;
        assert!(in_sync.is_some(), "the node on {port} did not come back as a replica of {master}");
    }

    /// After its master was killed: waits until a live node is master of `slot` in every live
    /// node's view, and every live node says `cluster_state:ok`. Returns that master's port;
    /// panics with what each node said if it takes longer than 30 s.
    pub async fn until_failover(&self, slot: u16) -> u16 {
        let live = self.live_ports();
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        loop {
            let seen = self.sightings(slot).await;
            let agreed = seen.first().and_then(|s| s.master).filter(|master| {
                live.contains(master)
                    && seen.iter().all(|s| s.state == "cluster_state:ok" && s.master == Some(*master))
            });
            if let Some(master) = agreed {
                return master;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "slot {slot} was not failed over to a live master within {SETTLE_LIMIT:?} \
                 (live nodes {live:?}): {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ports of the nodes not killed.
    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.process.is_some()).map(|n| n.port).collect()
    }

    /// What each live node says of the cluster's state and of `slot`'s master.
    async fn sightings(&self, slot: u16) -> Vec<Sighting> {
        let mut seen = Vec::new();
        for port in self.live_ports() {
            let state = match query::<String>(port, &["CLUSTER", "INFO"]).await {
                Ok(info) => info
                    .lines()
                    .map(str::trim)
                    .find(|l| l.starts_with("cluster_state:"))
                    .unwrap_or("no cluster_state")
                    .to_string(),
                Err(e) => e,
            };
            let master = self.views_from(port).await.ok().and_then(|views| {
                views.into_iter().find(|v| v.is_healthy_master() && v.serves(slot)).map(|v| v.port)
            });
            seen.push(Sighting { port, state, master });
        }
        seen
    }

    /// The cluster as the node on `port` sees it (`CLUSTER NODES`).
    async fn views_from(&self, port: u16) -> Result<Vec<NodeView>, String> {
        let listing = query::<String>(port, &["CLUSTER", "NODES"]).await?;
        Ok(listing.lines().filter_map(NodeView::parse).collect())
    }
}

/// A cluster-enabled redis-server on `port` (its cluster bus on `bus`: the default, port +
/// 10000, may be taken or past 65535), nothing saved, logging to a file in `dir`.
fn redis_server(port: u16, bus: u16, dir: &Path) -> Child {
    std::fs::create_dir_all(dir).expect("the node's directory");
    let timeout = NODE_TIMEOUT_MS.to_string();
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--cluster-port", &bus.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", &timeout])
        .args(["--appendonly", "no", "--save", ""])
        // A master feeds a new replica at once, not after the default 5 s wait for others.
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "redis.log"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server starts (is it installed?)")
}

/// Sends one command to the node on `port` over a connection of its own; an error (refused,
/// no answer within 2 s, an error reply) comes back as text.
async fn query<T: redis::FromRedisValue>(port: u16, command: &[&str]) -> Result<T, String> {
    let attempt = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
        let mut connection = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
        let mut cmd = redis::cmd(command[0]);
        cmd.arg(&command[1..]);
        cmd.query_async::<T>(&mut connection).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {port} within 2 s")))
}

/// Polls `check` every 100 ms until it gives a value, or `limit` passes (then `None`).
async fn until<T, F: Future<Output = Option<T>>>(limit: Duration, mut check: impl FnMut() -> F) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
