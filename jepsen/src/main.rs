//! `chat-jepsen run …`: a fault-injection run against real chatd processes.
//! `chat-jepsen check --history FILE`: check a recorded history and print the report.
//! Exit status 1 on any anomaly, 2 when the run itself could not be done.

use std::path::PathBuf;

use chat_jepsen::checkers::check_all;
use chat_jepsen::history::History;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chat-jepsen", about = "Correctness checks of the chat backend")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start real chatd processes in a private network namespace, run the workload under
    /// faults, drain, check, and write a report directory. Exit status 1 on any anomaly.
    Run(chat_jepsen::harness::RunArgs),
    /// Check a history (JSONL, Jepsen's shape) and print every checker's verdict.
    Check {
        #[arg(long)]
        history: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chat-jepsen: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Cmd::Run(args) => {
            if let Some(code) = chat_jepsen::harness::enter_netns()? {
                std::process::exit(code);
            }
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(chat_jepsen::harness::run(args))
        }
        Cmd::Check { history } => {
            let file = std::fs::File::open(&history)
                .map_err(|e| anyhow::anyhow!("open {}: {e}", history.display()))?;
            let h = History::read_jsonl(std::io::BufReader::new(file))?;
            let report = check_all(&h);
            println!("{} operations\n{report}", h.ops.len());
            Ok(report.valid())
        }
    }
}
