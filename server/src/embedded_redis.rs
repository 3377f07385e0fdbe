//! The redis-server child that `courier serve` starts when no Redis URL is given (and that the
//! tests start, one private instance each): loopback only, in a data directory only its owner
//! may read, behind a password that is never on a command line.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::{
    ffi::OsString,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

/// The ACL user Courier logs in as; the `default` user (no password) is switched off.
const USER: &str = "courier";

/// The redis-server configuration file written into the data directory at each start: it
/// carries the password, so that the command line (seen by anyone with `ps`) does not.
const CONFIG_FILE: &str = "courier-redis.conf";

/// Where the last started instance's port and password are kept, for [`EmbeddedRedis::running_url`]
/// and so that a restart in the same directory keeps its password.
const RUNNING_FILE: &str = "courier-redis.json";

/// A redis-server process on a free loopback port, append-only file on, stopped on drop.
pub struct EmbeddedRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
    password: String,
}

/// The contents of [`RUNNING_FILE`].
#[derive(Serialize, Deserialize)]
struct Running {
    port: u16,
    password: String,
}

impl EmbeddedRedis {
    /// Starts redis-server from PATH with its data in `dir`, and waits until it answers.
    pub async fn start(dir: &Path) -> anyhow::Result<EmbeddedRedis> {
        let dir = private_dir(dir)?;
        // A free port can be taken by someone else before redis binds it: try a few.
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            match Self::start_on(&dir, port).await {
                Ok(redis) => return Ok(redis),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("the loop ran at least once"))
    }

    /// Starts redis-server on a given port, e.g. to bring one back after a restart test. The
    /// password of the last start in `dir` is kept, so URLs handed out before still work.
    pub async fn start_on(dir: &Path, port: u16) -> anyhow::Result<EmbeddedRedis> {
        let dir = private_dir(dir)?;
        let password = match stored_password(&dir) {
            Some(password) => password,
            None => new_password()?,
        };
        let config = dir.join(CONFIG_FILE);
        write_private(&config, config_text(&password).as_bytes())?;
        let child = Command::new("redis-server")
            .arg(&config)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(&dir)
            .args(["--appendonly", "yes", "--save", "", "--daemonize", "no"])
            .args(["--logfile", "redis.log", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => anyhow::anyhow!(
                    "redis-server is not on PATH: install it (`apt-get install redis-server`, \
                     or run ./scripts/setup.sh) or point Courier at a Redis with COURIER_REDIS_URL"
                ),
                _ => anyhow::Error::new(e).context("starting redis-server"),
            })?;
        let mut redis = EmbeddedRedis { child, port, dir, password };
        redis.wait_until_ready().await?;
        let running = serde_json::to_vec(&Running { port, password: redis.password.clone() })
            .expect("a port and a string serialize");
        write_private(&redis.dir.join(RUNNING_FILE), &running)?;
        Ok(redis)
    }

    /// The URL of the embedded redis-server started in `dir` (as given to [`EmbeddedRedis::start`]),
    /// if one runs there and answers PING, logged in, within about a second; else `None`. Lets
    /// another Courier process (a CLI run beside `courier serve`) reach the same Redis.
    pub async fn running_url(dir: &Path) -> Option<String> {
        let text = tokio::fs::read(dir.join(RUNNING_FILE)).await.ok()?;
        let running: Running = serde_json::from_slice(&text).ok()?;
        if !is_password(&running.password) {
            return None;
        }
        let url = url(running.port, &running.password);
        let answers = async {
            let client = redis::Client::open(url.as_str()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
        };
        match tokio::time::timeout(Duration::from_secs(1), answers).await {
            Ok(Some(_pong)) => Some(url),
            _ => None,
        }
    }

    async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url()).context("building the Redis client")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "redis-server exited at start ({status}); see {}",
                    self.dir.join("redis.log").display()
                );
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer within 10 s on port {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://courier:PASSWORD@127.0.0.1:{port}`: hand it to a Redis client, never to a log.
    pub fn url(&self) -> String {
        url(self.port, &self.password)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The redis-server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks Redis to shut down (flushing its append-only file) and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Ok(client) = redis::Client::open(self.url())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            // The connection drops as Redis exits, so an error here is the expected answer.
            let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await;
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                status.context("waiting for redis-server to exit")?;
            }
            Err(_) => {
                self.child.kill().await.context("killing redis-server")?;
            }
        }
        Ok(())
    }

    /// Kills the process at once, as a crash would (for fault tests).
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("killing redis-server")
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn url(port: u16, password: &str) -> String {
    format!("redis://{USER}:{password}@127.0.0.1:{port}")
}

/// Creates `dir` (mode 0700) or takes an existing one's permissions down to 0700: the data and
/// the password in it are for this user alone. Returns it as an absolute path.
fn private_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (mode 0700)", dir.display()))?;
    dir.canonicalize().context("resolving the Redis data directory")
}

/// The password of the last start in `dir`, if it left a readable one.
fn stored_password(dir: &Path) -> Option<String> {
    let text = std::fs::read(dir.join(RUNNING_FILE)).ok()?;
    let running: Running = serde_json::from_slice(&text).ok()?;
    // Anything else could break the configuration file's syntax.
    is_password(&running.password).then_some(running.password)
}

/// 32 random bytes from the operating system, in hex.
fn new_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("getting random bytes for the embedded Redis's password: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `text` has the shape [`new_password`] makes.
fn is_password(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The configuration file: one ACL user with the password, no unauthenticated access.
///
/// The `default` user is off, so nobody can be it, yet keeps every permission: Redis 7.0 replays
/// the append-only file's transactions (MULTI/EXEC) as that user, and without them a restart
/// drops each one (`NOPERM` in redis.log).
fn config_text(password: &str) -> String {
    format!(
        "# Written by Courier at each start of its embedded redis-server; the other settings are\n\
         # on its command line.\n\
         user default off ~* &* +@all\n\
         user {USER} on >{password} ~* &* +@all\n\
         # `ps` shows the arguments as given (which data directory this server is for).\n\
         set-proc-title no\n"
    )
}

/// Writes `contents` to `path` readable by this user alone (mode 0600), replacing it whole.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut temporary = OsString::from(path.as_os_str());
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    // A leftover from an interrupted write may have other permissions: start afresh.
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ping(url: &str) -> redis::RedisResult<String> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async(&mut conn).await
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn a_client_without_the_password_is_refused_and_one_with_the_url_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let redis = EmbeddedRedis::start(dir.path()).await.unwrap();
        let port = redis.port();

        let error = ping(&format!("redis://127.0.0.1:{port}")).await.expect_err("no password");
        assert!(error.to_string().contains("NOAUTH"), "{error}");
        let error = ping(&format!("redis://{USER}:{}@127.0.0.1:{port}", "0".repeat(64)))
            .await
            .expect_err("a wrong password");
        assert_eq!(error.kind(), redis::ErrorKind::AuthenticationFailed, "{error}");
        let as_default = format!("redis://default:{}@127.0.0.1:{port}", redis.password);
        let error = ping(&as_default).await.expect_err("the default user is off");
        assert_eq!(error.kind(), redis::ErrorKind::AuthenticationFailed, "{error}");
        assert_eq!(ping(&redis.url()).await.unwrap(), "PONG");
        assert!(redis.url().starts_with(&format!("redis://{USER}:")), "the URL names the ACL user");
        redis.stop().await.unwrap();
    }

    #[tokio::test]
    async fn the_data_directory_and_its_files_are_private_and_the_password_is_on_no_command_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let redis = EmbeddedRedis::start(dir.path()).await.unwrap();

        assert_eq!(mode(dir.path()), 0o700, "an existing directory is made private");
        assert_eq!(mode(&dir.path().join(CONFIG_FILE)), 0o600);
        assert_eq!(mode(&dir.path().join(RUNNING_FILE)), 0o600);
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", redis.pid().unwrap())).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.contains(CONFIG_FILE), "the real command line is read: {cmdline}");
        assert!(!cmdline.contains(&redis.password), "{cmdline}");
        redis.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_restart_on_the_same_port_keeps_the_url_and_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let redis = EmbeddedRedis::start(dir.path()).await.unwrap();
        let (url, port) = (redis.url(), redis.port());
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // A transaction of two writes, as Courier's scripts make: the append-only file holds
        // it as MULTI/EXEC, replayed at the restart.
        let mut transaction = redis::pipe();
        transaction.atomic().set("kept", "yes").ignore().set("also", "yes").ignore();
        transaction.query_async::<()>(&mut conn).await.unwrap();
        redis.stop().await.unwrap();

        let redis = EmbeddedRedis::start_on(dir.path(), port).await.unwrap();
        assert_eq!(redis.url(), url);
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let kept: Vec<Option<String>> =
            redis::cmd("MGET").arg("kept").arg("also").query_async(&mut conn).await.unwrap();
        assert_eq!(kept, [Some("yes".to_string()), Some("yes".to_string())]);
        redis.stop().await.unwrap();
    }

    #[tokio::test]
    async fn running_url_finds_a_running_instance_and_none_once_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(EmbeddedRedis::running_url(dir.path()).await, None, "nothing ever started here");
        let redis = EmbeddedRedis::start(dir.path()).await.unwrap();

        let found = EmbeddedRedis::running_url(dir.path()).await;
        assert_eq!(found.as_deref(), Some(redis.url().as_str()));
        assert_eq!(ping(&found.unwrap()).await.unwrap(), "PONG");
        let running: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(RUNNING_FILE)).unwrap()).unwrap();
        assert_eq!(running["port"], redis.port());

        redis.stop().await.unwrap();
        assert_eq!(EmbeddedRedis::running_url(dir.path()).await, None);
    }
}
