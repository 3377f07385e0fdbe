//! The `courier` binary: parse the configuration, start tracing, build and run.

use clap::Parser;
use courier::{
    Server,
    config::{Cli, Command},
};
use tracing_subscriber::EnvFilter;

// glibc's allocator spent ~5 % of the server's CPU consolidating free chunks; with mimalloc
// (transparent huge pages off: with them its RSS grew by 40 %) 10,000 SSE clients take 15 % less
// memory and the latency p99 fell from 1.9 to 1.3 ms (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let role = cli.command.unwrap_or(Command::Serve);
    Server::build(cli.config, role).await?.run().await
}
