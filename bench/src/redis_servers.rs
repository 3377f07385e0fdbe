//! Private redis-servers for the scale workload: one node, or a Redis Cluster of masters without
//! replicas (a replica would cost its master CPU that one node does not spend), each on free
//! loopback ports with nothing saved to disk, killed when dropped.

use anyhow::{Context, bail, ensure};
use std::{process::Stdio, time::Duration};
use tokio::process::{Child, Command};

/// The hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// One redis-server this tool started.
struct Server {
    port: u16,
    child: Child,
}

/// One node or one cluster; its processes are killed, then its directory removed, when dropped.
pub struct RedisServers {
    servers: Vec<Server>,
    cluster: bool,
    _dir: tempfile::TempDir,
}

impl RedisServers {
    /// One redis-server, cluster mode off.
    pub async fn node() -> anyhow::Result<RedisServers> {
        let dir = tempfile::tempdir()?;
        let server = start(dir.path(), false).await?;
        Ok(RedisServers { servers: vec![server], cluster: false, _dir: dir })
    }

    /// `masters` redis-servers with cluster mode on, made one cluster by `redis-cli --cluster
    /// create … --cluster-replicas 0` (which shares the slots evenly, in order of the list), ready
    /// when every node serves every slot.
    pub async fn cluster(masters: usize) -> anyhow::Result<RedisServers> {
        let dir = tempfile::tempdir()?;
        let mut servers = Vec::with_capacity(masters);
        for _ in 0..masters {
            servers.push(start(dir.path(), true).await?);
        }
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(servers.iter().map(|s| format!("127.0.0.1:{}", s.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running redis-cli --cluster create (is redis-cli installed?)")?;
        ensure!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisServers { servers, cluster: true, _dir: dir };
        cluster.until_ready(masters).await?;
        Ok(cluster)
    }

    /// Waits until every node says the cluster is ok, with every slot served and every node known.
    async fn until_ready(&self, masters: usize) -> anyhow::Result<()> {
        let ready = [
            "cluster_state:ok".to_string(),
            format!("cluster_slots_assigned:{SLOTS}"),
            format!("cluster_known_nodes:{masters}"),
        ];
        for _ in 0..300 {
            let mut all = true;
            for server in 0..self.servers.len() {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut self.connection(server).await?)
                    .await?;
                all &= ready.iter().all(|line| info.lines().any(|l| l.trim() == line));
            }
            if all {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the cluster of {masters} masters was not ready within 30 s")
    }

    /// What Courier is given as `--redis-url`: the node's URL, or the masters' comma-separated
    /// (which puts it in cluster mode).
    pub fn url(&self) -> String {
        self.servers.iter().map(|s| format!("redis://127.0.0.1:{}", s.port)).collect::<Vec<_>>().join(",")
    }

    /// Each server's process id, in the order of [`RedisServers::holders`]' indexes.
    pub fn pids(&self) -> anyhow::Result<Vec<u32>> {
        self.servers.iter().map(|s| s.child.id().context("a redis-server has exited")).collect()
    }

    /// Bytes every server has read from and written to its clients so far, summed:
    /// `total_net_input_bytes` and `total_net_output_bytes` of `INFO stats`.
    pub async fn network_bytes(&self) -> anyhow::Result<(u64, u64)> {
        let mut total = (0, 0);
        for server in 0..self.servers.len() {
            let info: String =
                redis::cmd("INFO").arg("stats").query_async(&mut self.connection(server).await?).await?;
            let (read, written) = network_bytes_of(&info).context("no total_net_*_bytes in INFO stats")?;
            total = (total.0 + read, total.1 + written);
        }
        Ok(total)
    }

    /// A plain connection to the `index`th server.
    pub async fn connection(&self, index: usize) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let url = format!("redis://127.0.0.1:{}", self.servers[index].port);
        Ok(redis::Client::open(url)?.get_multiplexed_async_connection().await?)
    }

    /// The index of the server that holds each queue's keys under `prefix`: the one node, or on a
    /// cluster the master that serves the queue's slot, checked against Redis (`CLUSTER KEYSLOT`
    /// of one of the queue's keys is [`key_slot`] of its name, the hash tag Courier gives it).
    pub async fn holders(&self, prefix: &str, queues: &[String]) -> anyhow::Result<Vec<usize>> {
        if !self.cluster {
            return Ok(vec![0; queues.len()]);
        }
        let mut served = Vec::with_capacity(self.servers.len());
        for server in 0..self.servers.len() {
            let nodes: String =
                redis::cmd("CLUSTER").arg("NODES").query_async(&mut self.connection(server).await?).await?;
            served.push(own_slots(&nodes));
        }
        let mut holders = Vec::with_capacity(queues.len());
        for queue in queues {
            let key = format!("{prefix}:{{{queue}}}:settings");
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query_async(&mut self.connection(0).await?)
                .await?;
            ensure!(slot == key_slot(queue), "Redis puts {key} in slot {slot}, not {}", key_slot(queue));
            let holder =
                served.iter().position(|ranges| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)));
            holders.push(holder.with_context(|| format!("no master serves slot {slot} ({queue})"))?);
        }
        Ok(holders)
    }
}

/// Starts one redis-server on free ports (its cluster bus on a port of its own, as the default
/// port + 10000 may be taken or out of range) and waits until it answers.
async fn start(dir: &std::path::Path, cluster: bool) -> anyhow::Result<Server> {
    let port = free_port()?;
    let home = dir.join(port.to_string());
    std::fs::create_dir(&home)?;
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&home)
        .args(["--logfile", "redis.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    if cluster {
        command.args([
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &free_port()?.to_string(),
            "--cluster-config-file",
            "nodes.conf",
        ]);
    }
    let child = command.spawn().context("starting redis-server (is it installed?)")?;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    for _ in 0..100 {
        if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut connection).await;
            if pong.is_ok() {
                return Ok(Server { port, child });
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("redis-server on port {port} did not answer within 5 s (see {}/redis.log)", home.display())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `total_net_input_bytes` and `total_net_output_bytes` of an `INFO stats` reply.
fn network_bytes_of(info: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok())
    };
    Some((field("total_net_input_bytes")?, field("total_net_output_bytes")?))
}

/// The slot ranges the node answering `CLUSTER NODES` serves (its `myself` line).
fn own_slots(nodes: &str) -> Vec<(u16, u16)> {
    let Some(line) =
        nodes.lines().find(|l| l.split_whitespace().nth(2).is_some_and(|f| f.contains("myself")))
    else {
        return Vec::new();
    };
    // id, address, flags, master, ping sent, pong received, epoch, link state, then the slots:
    // `0-5460`, a single `5461`, or `[…]` for a slot being moved (not served yet).
    line.split_whitespace()
        .skip(8)
        .filter_map(|range| match range.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => range.parse().ok().map(|slot| (slot, slot)),
        })
        .collect()
}

/// The Redis Cluster slot of a key that is its own hash tag: CRC16 (XMODEM) modulo 16384.
pub fn key_slot(tag: &str) -> u16 {
    let crc = tag.bytes().fold(0u16, |crc, byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 }
        })
    });
    crc % SLOTS
}

/// `masters` queue names, one on each master of a cluster whose slots are shared evenly in order
/// (what `redis-cli --cluster create` does): the first `scale-{i}` whose slot lies in each share,
/// away from its edges, so that a share rounded either way still holds it.
pub fn queues_on_distinct_masters(masters: usize) -> Vec<String> {
    let share = usize::from(SLOTS) / masters;
    (0..masters)
        .map(|master| {
            (0..)
                .map(|i| format!("scale-{i}"))
                .find(|name| {
                    let slot = usize::from(key_slot(name));
                    slot / share == master && slot % share > 16 && slot % share < share - 16
                })
                .expect("every share of the slots holds some scale-{i}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_are_the_ones_redis_gives() {
        // `CLUSTER KEYSLOT` on Redis 7.0, and the CRC16 check value of "123456789" (0x31C3).
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("bar"), 5061);
        assert_eq!(key_slot("hello"), 866);
        assert_eq!(key_slot("123456789"), 0x31C3);
    }

    #[test]
    fn three_queues_fall_in_the_three_shares_of_the_slots() {
        let queues = queues_on_distinct_masters(3);
        let slots: Vec<u16> = queues.iter().map(|q| key_slot(q)).collect();
        assert_eq!(queues, ["scale-1", "scale-0", "scale-2"]);
        assert!(slots[0] < 5461 && (5461..10923).contains(&slots[1]) && slots[2] >= 10923, "{slots:?}");
    }

    #[test]
    fn network_bytes_are_read_from_info_stats() {
        let info = "# Stats\r\ntotal_net_input_bytes:1200\r\ntotal_net_output_bytes:3400\r\n\
                    total_net_repl_input_bytes:7\r\n";
        assert_eq!(network_bytes_of(info), Some((1200, 3400)));
        assert_eq!(network_bytes_of("# Stats\r\n"), None);
    }

    #[test]
    fn a_node_serves_the_slots_of_its_myself_line() {
        let nodes = "\
            07c3 127.0.0.1:30002@40002 master - 0 1700000000000 2 connected 5461-10922\n\
            e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 12000 [12001->-9b1e]\n\
            9b1e 127.0.0.1:30003@40003 master - 0 1700000000000 3 connected 10923-16383\n";
        assert_eq!(own_slots(nodes), [(0, 5460), (12000, 12000)]);
        assert_eq!(own_slots(""), []);
    }
}
