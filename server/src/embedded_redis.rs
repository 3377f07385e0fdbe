//! The redis-server child that `courier serve` starts when no Redis URL is given (and that the
//! tests start, one private instance each).

use anyhow::{Context, bail};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

/// A redis-server process on a free loopback port, append-only file on, stopped on drop.
pub struct EmbeddedRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl EmbeddedRedis {
    /// Starts redis-server from PATH with its data in `dir`, and waits until it answers.
    pub async fn start(dir: &Path) -> anyhow::Result<EmbeddedRedis> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize().context("resolving the Redis data directory")?;
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

    /// Starts redis-server on a given port, e.g. to bring one back after a restart test.
    pub async fn start_on(dir: &Path, port: u16) -> anyhow::Result<EmbeddedRedis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(dir)
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
        let mut redis = EmbeddedRedis { child, port, dir: dir.to_path_buf() };
        redis.wait_until_ready().await?;
        Ok(redis)
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

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
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
