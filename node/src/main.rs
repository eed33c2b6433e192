//! The `helixflow` binary: parses the command line, sets up logging and hands off.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = helixflow_node::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    helixflow_node::cli::execute(cli)
}
