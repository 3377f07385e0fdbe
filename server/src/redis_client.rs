//! The one Redis client of a process: one server or a cluster, plain or TLS (`rediss://`),
//! trusting a private CA when `--redis-ca-cert` names one; and [`Conn`], the connection every
//! part of Courier talks through, whichever of the two it is.

use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo,
    Pipeline, RedisFuture, RedisResult, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
    io::tcp::TcpSettings,
};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// The command `name`, with room for `args` arguments after it of `bytes` in all. redis-rs grows
/// a command's buffers as its arguments come, reallocating and copying them at each doubling: on
/// the commands a worker's rounds build for each task, some 5 % of its instructions went to that
/// (docs/benchmark-notes.md, "Forty-first step"). Too little room grows as before.
pub fn command(name: &str, args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(1 + args, name.len() + bytes);
    cmd.arg(name);
    cmd
}

/// The most digits a `u64` (a number of milliseconds) takes as an argument: room for one.
pub const U64_DIGITS: usize = 20;

/// The bytes of `args` in all, as a command holds them.
pub fn bytes_of<S: AsRef<[u8]>>(args: &[S]) -> usize {
    args.iter().map(|arg| arg.as_ref().len()).sum()
}

/// The streams of an `XREAD` or `XREADGROUP` reply (RESP2 array or RESP3 map), each by its key,
/// with its entries; none on a timeout.
pub fn read_streams(reply: Value) -> Vec<(Vec<u8>, Value)> {
    let key = |value: Value| match value {
        Value::BulkString(key) => Some(key),
        Value::SimpleString(key) => Some(key.into_bytes()),
        _ => None,
    };
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(key_and_entries) if key_and_entries.len() == 2 => {
                    let mut parts = key_and_entries.into_iter();
                    Some((key(parts.next()?)?, parts.next()?))
                }
                _ => None,
            })
            .collect(),
        Value::Map(streams) => {
            streams.into_iter().filter_map(|(name, entries)| Some((key(name)?, entries))).collect()
        }
        _ => Vec::new(),
    }
}

/// The line every PEM certificate starts with.
const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// How long a connection attempt to one Redis server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why no Redis client could be made from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse; it is never repeated, since it may hold a password.
    #[error("the Redis URL is not valid")]
    Url(#[source] redis::RedisError),
    /// A CA certificate was given for a connection without TLS.
    #[error("--redis-ca-cert needs a rediss:// Redis URL: a CA certificate only applies to TLS")]
    CaWithoutTls,
    /// The CA certificate file could not be read.
    #[error("--redis-ca-cert {}: cannot read it", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA certificate file holds no PEM certificate.
    #[error("--redis-ca-cert {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display())]
    NoCertificate { path: PathBuf },
    /// The CA certificate file holds something that is not a usable certificate.
    #[error("--redis-ca-cert {}: not a usable CA certificate", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: redis::RedisError,
    },
    /// A cluster's nodes are reached over TCP, not over a Unix socket.
    #[error("a Redis Cluster is reached over TCP: redis+unix:// cannot name one of its nodes")]
    ClusterOverUnix,
    /// Some of a cluster's URLs use TLS and some do not.
    #[error("the Redis Cluster's URLs mix redis:// and rediss://: use one scheme for every node")]
    MixedTls,
    /// The cluster client refused its settings (the URL list is never repeated).
    #[error("the Redis Cluster settings are not valid")]
    Cluster(#[source] redis::RedisError),
}

/// Where a process's Redis connections come from: one server, or a Redis Cluster (whose client
/// follows its slots, redirections and failovers). Cheap to clone.
#[derive(Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "a few per process: boxing saves nothing worth the indirection"
)]
pub enum RedisClient {
    Node(Client),
    Cluster(ClusterClient),
}

/// Makes the client all of this process's Redis connections come from.
///
/// `urls` is one URL, or several separated by commas (the seed nodes of a cluster); `cluster`
/// makes a single URL a cluster's seed. With `ca_cert` (a PEM file), a `rediss://` server must
/// present a certificate signed by that CA and the system's roots are not consulted; without it,
/// `rediss://` trusts the system's roots. Nothing connects yet: a refused certificate or password
/// shows on the first connection.
pub fn open(urls: &str, cluster: bool, ca_cert: Option<&Path>) -> Result<RedisClient, ClientError> {
    let infos = urls
        .split(',')
        .map(|url| url.trim().into_connection_info().map_err(ClientError::Url))
        .map(|info| info.map(|info| info.set_tcp_settings(tcp_settings())))
        .collect::<Result<Vec<ConnectionInfo>, _>>()?;
    let tls = infos.iter().filter(|info| matches!(info.addr(), ConnectionAddr::TcpTls { .. })).count();
    if tls > 0 {
        install_crypto_provider();
    }
    let root_cert = match ca_cert {
        None => None,
        Some(_) if tls == 0 => return Err(ClientError::CaWithoutTls),
        Some(path) => Some(read_ca(path)?),
    };
    let certificates = |root_cert| TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
    if !cluster && infos.len() == 1 {
        let info = infos.into_iter().next().expect("one URL");
        return match (root_cert, ca_cert) {
            (Some(pem), Some(path)) => Client::build_with_tls(info, certificates(pem))
                .map_err(|source| ClientError::BadCa { path: path.to_owned(), source })
                .map(RedisClient::Node),
            _ => Client::open(info).map_err(ClientError::Url).map(RedisClient::Node),
        };
    }
    if infos.iter().any(|info| matches!(info.addr(), ConnectionAddr::Unix(_))) {
        return Err(ClientError::ClusterOverUnix);
    }
    if tls != 0 && tls != infos.len() {
        return Err(ClientError::MixedTls);
    }
    let mut builder = ClusterClientBuilder::new(infos).tcp_settings(tcp_settings());
    if let Some(pem) = root_cert {
        builder = builder.certs(certificates(pem));
    }
    builder.build().map(RedisClient::Cluster).map_err(|source| match ca_cert {
        Some(path) => ClientError::BadCa { path: path.to_owned(), source },
        None => ClientError::Cluster(source),
    })
}

/// How Courier's connections to Redis are set up: `TCP_NODELAY`, as Redis sets on its side (and
/// ioredis by default). redis-rs leaves Nagle's algorithm on, which holds a small write back
/// while data sent before it is unacknowledged (docs/benchmark-notes.md, "Twenty-fourth step").
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// The PEM file `path`, once it holds a certificate.
fn read_ca(path: &Path) -> Result<Vec<u8>, ClientError> {
    let pem = std::fs::read(path).map_err(|source| ClientError::ReadCa { path: path.to_owned(), source })?;
    // redis-rs skips anything that is not PEM, which would leave it trusting no CA at all.
    if !pem.windows(PEM_CERTIFICATE.len()).any(|window| window == PEM_CERTIFICATE) {
        return Err(ClientError::NoCertificate { path: path.to_owned() });
    }
    Ok(pem)
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URLs: they may hold a password.
        f.write_str(if self.is_cluster() { "RedisClient::Cluster" } else { "RedisClient::Node" })
    }
}

impl RedisClient {
    /// Whether this is a Redis Cluster's client.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisClient::Cluster(_))
    }

    /// A connection shared by every clone of it, which gives up on an answer after
    /// `response_timeout` and reconnects by itself (one server) or follows the cluster's slots
    /// and failovers (a cluster).
    pub async fn connect(&self, response_timeout: Duration) -> RedisResult<Conn> {
        match self {
            RedisClient::Node(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                ConnectionManager::new_with_config(client.clone(), config).await.map(Conn::Node)
            }
            RedisClient::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(response_timeout);
                client.get_async_connection_with_config(config).await.map(Conn::Cluster)
            }
        }
    }

    /// A connection of its own for blocking reads that block at most `longest_block`, which
    /// would hold up the commands of a shared connection behind them. It gives up on an answer
    /// [`BLOCKING_GRACE`] after that (a peer gone without a word). Nothing reconnects it: on an
    /// error, drop it and ask for another.
    pub async fn connect_blocking(&self, longest_block: Duration) -> RedisResult<Conn> {
        let response_timeout = longest_block + BLOCKING_GRACE;
        match self {
            RedisClient::Node(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                client.get_multiplexed_async_connection_with_config(&config).await.map(Conn::Blocking)
            }
            RedisClient::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(response_timeout);
                client.get_async_connection_with_config(config).await.map(Conn::Cluster)
            }
        }
    }
}

/// `CLIENT <subcommand>` (`ID`, `UNBLOCK`: how a blocking read is woken).
pub fn client_command(subcommand: &str) -> Cmd {
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg(subcommand);
    cmd
}

/// How much longer than its longest block a blocking read may take to answer before its
/// connection is given up on.
pub const BLOCKING_GRACE: Duration = Duration::from_secs(10);

/// A connection to Redis: to one server (reconnecting by itself, or one of its own for blocking
/// reads), or to a cluster, whose commands go to the node that serves their keys' slot. Cheap to
/// clone: clones share the connection. A pipeline or script on a cluster must keep to one slot
/// (see `docs/named-queues.md`).
#[derive(Clone)]
pub enum Conn {
    Node(ConnectionManager),
    Blocking(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Whether commands go to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// The replies of `pipe`'s commands, in order, where the commands may touch keys of many
    /// slots and need not run together: one pipeline on one server; on a cluster, where a
    /// pipeline keeps to one slot, each command on its own, all sent at once. `pipe` ignores no
    /// reply and is not atomic.
    pub async fn query_spread<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<Vec<T>> {
        match self {
            Conn::Cluster(conn) => {
                let each = pipe.cmd_iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<T>(&mut conn).await }
                });
                futures::future::try_join_all(each).await
            }
            _ => pipe.query_async(&mut self.clone()).await,
        }
    }

    /// `cmd`, which names no key (`CLIENT ID`, `CLIENT UNBLOCK`), sent to the server that holds
    /// `key`: on a cluster, the master of its slot.
    pub async fn query_beside<T: FromRedisValue>(&self, key: &str, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Cluster(conn) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = conn.clone().route_command(cmd.clone(), routing).await?;
                T::from_redis_value(value).map_err(Into::into)
            }
            _ => cmd.query_async(&mut self.clone()).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(conn) => conn.req_packed_command(cmd),
            Conn::Blocking(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Blocking(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(conn) => conn.get_db(),
            Conn::Blocking(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Makes ring the process-wide rustls crypto provider, unless the program chose one already
/// (for `rediss://` and for serving HTTPS alike).
pub(crate) fn install_crypto_provider() {
    // An error only says a provider is installed (by an earlier call, or the embedding program).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_file(contents: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), contents).unwrap();
        file
    }

    #[test]
    fn a_command_with_room_made_is_the_command_redis_rs_builds() {
        let fields = ["status", "lease", "attempts"];
        let key = "courier:{default}:task:0190f5a3-1c2d-7e4f-8a6b-1c2d3e4f5a6b";
        assert_eq!(bytes_of(&fields), 19);
        let sized = command("HMGET", 1 + fields.len(), key.len() + bytes_of(&fields))
            .arg(key)
            .arg(&fields[..])
            .clone();
        let grown = redis::cmd("HMGET").arg(key).arg(&fields[..]).clone();
        assert_eq!(sized.get_packed_command(), grown.get_packed_command());
        // Too little room grows as redis-rs's own would.
        let cramped = command("HMGET", 0, 0).arg(key).arg(&fields[..]).clone();
        assert_eq!(cramped.get_packed_command(), grown.get_packed_command());
    }

    #[test]
    fn plain_and_tls_urls_make_a_client_without_a_ca() {
        assert!(open("redis://127.0.0.1:6379", false, None).is_ok());
        assert!(open("rediss://user:pw@127.0.0.1:6380", false, None).is_ok());
    }

    #[test]
    fn connections_to_one_server_are_set_up_without_nagle() {
        for url in ["redis://127.0.0.1:6379", "rediss://user:pw@127.0.0.1:6380"] {
            let RedisClient::Node(client) = open(url, false, None).unwrap() else {
                panic!("{url}: not one server")
            };
            assert!(client.get_connection_info().tcp_settings().nodelay(), "{url}");
        }
    }

    #[test]
    fn a_ca_certificate_with_a_plain_url_is_refused_naming_the_flag() {
        let error =
            open("redis://127.0.0.1:6379", false, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(matches!(error, ClientError::CaWithoutTls));
        assert!(error.to_string().contains("--redis-ca-cert"));
    }

    #[test]
    fn an_unreadable_ca_certificate_is_refused_naming_the_flag() {
        let error =
            open("rediss://127.0.0.1:6380", false, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(matches!(error, ClientError::ReadCa { .. }));
        assert!(error.to_string().starts_with("--redis-ca-cert /nonexistent/ca.pem"));
    }

    #[test]
    fn a_file_without_a_pem_certificate_is_refused_naming_the_flag() {
        let file = ca_file("just some text\n");
        let error = open("rediss://127.0.0.1:6380", false, Some(file.path())).unwrap_err();
        assert!(matches!(error, ClientError::NoCertificate { .. }));
        assert!(error.to_string().contains("--redis-ca-cert"));
    }

    #[test]
    fn a_pem_block_that_is_no_certificate_is_refused_naming_the_flag() {
        // Valid PEM and base64 ("hello"), but no X.509 certificate inside.
        let file = ca_file("-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n");
        let error = open("rediss://127.0.0.1:6380", false, Some(file.path())).unwrap_err();
        assert!(matches!(error, ClientError::BadCa { .. }), "{error:?}");
        assert!(error.to_string().contains("--redis-ca-cert"));
    }

    #[test]
    fn an_invalid_url_is_refused_without_repeating_it() {
        let error = open("rediss://user:hunter2@", false, None).unwrap_err();
        assert!(!format!("{error:?}").contains("hunter2"));
    }

    #[test]
    fn several_urls_or_the_cluster_flag_make_a_cluster_client() {
        assert!(open("redis://127.0.0.1:7000,redis://127.0.0.1:7001", false, None).unwrap().is_cluster());
        assert!(open("redis://127.0.0.1:7000", true, None).unwrap().is_cluster());
        assert!(!open("redis://127.0.0.1:7000", false, None).unwrap().is_cluster());
    }

    #[test]
    fn a_cluster_refuses_unix_sockets_and_mixed_schemes() {
        let unix = open("redis+unix:///tmp/redis.sock", true, None).unwrap_err();
        assert!(matches!(unix, ClientError::ClusterOverUnix), "{unix:?}");
        let mixed = open("redis://127.0.0.1:7000,rediss://127.0.0.1:7001", false, None).unwrap_err();
        assert!(matches!(mixed, ClientError::MixedTls), "{mixed:?}");
    }

    #[test]
    fn an_invalid_url_in_a_list_is_refused_without_repeating_the_list() {
        let error = open("redis://127.0.0.1:7000,rediss://user:hunter2@", false, None).unwrap_err();
        assert!(!format!("{error:?}").contains("hunter2"));
    }
}
