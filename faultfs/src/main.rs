//! `chat-faultfs`: mount the fault-injecting filesystem (`mount`, in the foreground until
//! SIGTERM/SIGINT or an outside unmount), or send one command to a running mount's control
//! socket (`ctl`, printing the reply; exit status 1 on an `err` reply, 2 if it cannot ask).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A fault-injecting FUSE filesystem: unsynced data lives in memory until fsync, so a
/// simulated power loss can drop it; writes and fsyncs can be made to fail; bits can rot.
#[derive(Debug, Parser)]
#[command(name = "chat-faultfs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a backing directory and serve it until SIGTERM/SIGINT or an unmount.
    Mount {
        /// The directory holding the synced state of the files.
        #[arg(long)]
        backing: PathBuf,
        /// Where to mount it (an existing empty directory).
        #[arg(long)]
        mountpoint: PathBuf,
        /// The control socket to create.
        #[arg(long)]
        control: PathBuf,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Send one command to a mount's control socket and print the reply.
    ///
    /// Commands: power-loss | fail <write|fsync> <eio|enospc|off> | fail clear |
    /// flip <path> <offset> <bit> | sync | dirty | status | ping
    Ctl {
        /// The mount's control socket.
        #[arg(long)]
        control: PathBuf,
        /// The command, as words.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Mount {
            backing,
            mountpoint,
            control,
            threads,
        } => {
            let opts = faultfs::MountOptions {
                backing,
                mountpoint,
                control,
                threads,
            };
            match faultfs::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chat-faultfs: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Ctl { control, command } => ctl(&control, &command.join(" ")),
    }
}

fn ctl(control: &std::path::Path, command: &str) -> ExitCode {
    match faultfs::request(control, command) {
        Ok(reply) => {
            println!("{reply}");
            if reply.starts_with("ok") {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("chat-faultfs: {e:#}");
            ExitCode::from(2)
        }
    }
}
