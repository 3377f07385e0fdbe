//! The `courier` binary: parse the configuration, start tracing, build and run.

use clap::Parser;
use courier::{
    Server,
    config::{Cli, Command},
};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let role = cli.command.unwrap_or(Command::Serve);
    Server::build(cli.config, role).await?.run().await
}
