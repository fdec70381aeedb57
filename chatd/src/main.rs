//! `chatd`: with no flags, a single-node cluster in `./data`; see `chatd --help`.

mod heap;

use chatd::config::{Flags, ServerConfig};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // Before the runtime starts any thread: glibc reads these when threads first allocate.
    heap::tune_c_malloc();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chatd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve())
}

async fn serve() -> std::process::ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        // Colour codes only for a terminal: logs redirected to files stay greppable.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let result = async {
        let config = ServerConfig::resolve(Flags::parse())?;
        if let Some(addr) = config.metrics_listen {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .map_err(|e| anyhow::anyhow!("metrics exporter on {addr}: {e}"))?;
        }
        heap::start(config.metrics_listen.is_some());
        chatd::server::run(config, chatd::server::shutdown_signal()).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("chatd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
