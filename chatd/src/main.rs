//! `chatd`: with no flags, a single-node cluster in `./data`; see `chatd --help`.

mod heap;

use chatd::config::{Flags, LogFormat, ServerConfig};
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
    let flags = Flags::parse();
    init_logs(flags.log_format);
    let result = async {
        let print = flags.print_config;
        let config = ServerConfig::resolve(flags)?;
        if print {
            print!("{}", config.to_toml()?);
            return Ok(());
        }
        if let Some(addr) = config.metrics_listen {
            // Buckets (not summaries) for call times, so dashboards can add nodes up.
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("chatd_grpc_request_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                        5.0, 10.0,
                    ],
                )
                .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
                // A call's whole life: a unary call's milliseconds to a device stream's hours.
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("chatd_grpc_call_seconds".into()),
                    &[
                        0.001,
                        0.01,
                        0.1,
                        1.0,
                        10.0,
                        60.0,
                        600.0,
                        3600.0,
                        6.0 * 3600.0,
                        86400.0,
                    ],
                )
                .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
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

/// Logs go to stderr, filtered by RUST_LOG (default: info, openraft's warnings).
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        // Colour codes only for a terminal: logs redirected to files stay greppable.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line, with the request's or device stream's span fields.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
