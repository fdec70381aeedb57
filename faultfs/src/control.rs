//! The control socket: a Unix stream socket that takes one command per line and answers each
//! with one line, `ok ...` or `err <why>`. A connection may send several commands in turn.
//!
//! Commands:
//! - `power-loss`: drop all unsynced data (`ok dropped_bytes=N dropped_files=M`).
//! - `fail write eio|enospc`, `fail fsync eio|enospc`: make every such operation fail from now
//!   on; `fail write off`, `fail fsync off` end one, `fail clear` ends all.
//! - `flip <path> <offset> <bit>`: flip one bit of a file (path relative to the mount).
//! - `sync`: write all unsynced data back and sync it (no failure injected).
//! - `dirty`: the files with unsynced data (`ok N files: <path> (B unsynced bytes, length L),
//!   ...`; paths relative to the mount).
//! - `status`: `ok dirty_files=N dirty_bytes=N fail_write=.. fail_fsync=.. ops=N inodes=N
//!   open_handles=N`.
//! - `ping`: `ok pong`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::faults::{Injected, Op};
use crate::state::State;

/// Longest command line accepted.
const MAX_LINE: u64 = 4096;

/// How long a connection may stay silent before the server drops it.
const IDLE: Duration = Duration::from_secs(300);

/// How long the client waits for a reply.
const REPLY_WAIT: Duration = Duration::from_secs(120);

/// A parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Drop all unsynced data.
    PowerLoss,
    /// Make an operation fail (or succeed again with `None`).
    Fail(Op, Option<Injected>),
    /// End all injected failures.
    FailClear,
    /// Flip one bit of a file.
    Flip {
        /// Path relative to the mount.
        path: String,
        /// Byte offset.
        offset: u64,
        /// Bit 0-7.
        bit: u8,
    },
    /// Write everything back.
    Sync,
    /// Report counters.
    Status,
    /// List the files with unsynced data.
    Dirty,
    /// Liveness check.
    Ping,
}

/// Parse one command line.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let mut words = line.split_whitespace();
    let verb = words.next().ok_or("empty command")?;
    let rest: Vec<&str> = words.collect();
    match (verb, rest.as_slice()) {
        ("power-loss", []) => Ok(Command::PowerLoss),
        ("status", []) => Ok(Command::Status),
        ("sync", []) => Ok(Command::Sync),
        ("dirty", []) => Ok(Command::Dirty),
        ("ping", []) => Ok(Command::Ping),
        ("fail", ["clear"]) => Ok(Command::FailClear),
        ("fail", [op, how]) => parse_fail(op, how),
        ("flip", _) => parse_flip(line[verb.len()..].trim()),
        _ => Err(format!(
            "unknown command {line:?} (power-loss, fail <write|fsync> <eio|enospc|off>, \
             fail clear, flip <path> <offset> <bit>, sync, dirty, status, ping)"
        )),
    }
}

fn parse_fail(op: &str, how: &str) -> Result<Command, String> {
    let op =
        Op::parse(op).ok_or_else(|| format!("fail: unknown operation {op:?} (write, fsync)"))?;
    if how.eq_ignore_ascii_case("off") || how.eq_ignore_ascii_case("clear") {
        return Ok(Command::Fail(op, None));
    }
    let with = Injected::parse(how)
        .ok_or_else(|| format!("fail: unknown error {how:?} (eio, enospc, off)"))?;
    Ok(Command::Fail(op, Some(with)))
}

/// `<path> <offset> <bit>`; the path may contain spaces (offset and bit are the last words).
fn parse_flip(args: &str) -> Result<Command, String> {
    let usage = "usage: flip <path> <offset> <bit 0-7>";
    let mut parts = args.rsplitn(3, char::is_whitespace);
    let (Some(bit), Some(offset), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(usage.to_string());
    };
    let path = path.trim();
    let bit: u8 = bit
        .parse()
        .ok()
        .filter(|b| *b < 8)
        .ok_or_else(|| format!("flip: bit must be 0-7, got {bit:?}"))?;
    let offset: u64 = offset
        .parse()
        .map_err(|_| format!("flip: offset must be a byte offset, got {offset:?}"))?;
    if path.is_empty() {
        return Err(usage.to_string());
    }
    Ok(Command::Flip {
        path: path.to_string(),
        offset,
        bit,
    })
}

/// Run a command; the reply line (without newline).
pub fn execute(state: &State, command: Command) -> String {
    match command {
        Command::PowerLoss => {
            let d = state.power_loss();
            format!("ok dropped_bytes={} dropped_files={}", d.bytes, d.files)
        }
        Command::Fail(op, with) => {
            state.set_fault(op, with);
            format!("ok {}", *crate::table::lock(&state.faults))
        }
        Command::FailClear => {
            state.clear_faults();
            format!("ok {}", *crate::table::lock(&state.faults))
        }
        Command::Flip { path, offset, bit } => match state.flip(&path, offset, bit) {
            Ok(done) => format!("ok {done}"),
            Err(e) => format!("err {}", one_line(&format!("{e:#}"))),
        },
        Command::Sync => match state.sync_all() {
            Ok(n) => format!("ok synced_files={n}"),
            Err(e) => format!("err {}", one_line(&format!("{e:#}"))),
        },
        Command::Status => format!("ok {}", state.status()),
        Command::Dirty => dirty_reply(state),
        Command::Ping => "ok pong".to_string(),
    }
}

fn dirty_reply(state: &State) -> String {
    let files = state.dirty_files();
    let listed: Vec<String> = files
        .iter()
        .map(|(path, bytes, size)| format!("{path} ({bytes} unsynced bytes, length {size})"))
        .collect();
    one_line(&format!("ok {} files: {}", files.len(), listed.join(", ")))
}

/// Parse and run one line; the reply line.
pub fn handle_line(state: &State, line: &str) -> String {
    match parse(line) {
        Ok(command) => execute(state, command),
        Err(why) => format!("err {}", one_line(&why)),
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The listening control socket; the socket file is removed when it is dropped.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
}

impl Server {
    /// Listen on `path` (replacing a stale socket file) and serve commands on `state` from a
    /// background thread.
    pub fn start(path: &Path, state: Arc<State>) -> anyhow::Result<Server> {
        clear_stale(path)?;
        let listener = UnixListener::bind(path)
            .with_context(|| format!("listen on the control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restrict {}", path.display()))?;
        std::thread::Builder::new()
            .name("faultfs-control".into())
            .spawn(move || accept_loop(listener, state))
            .context("start the control thread")?;
        Ok(Server {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Remove a socket file nobody listens on; refuse if someone does.
pub fn clear_stale(path: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if UnixStream::connect(path).is_ok() {
        bail!("{} is in use by a running faultfs", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("remove the stale {}", path.display()))
}

fn accept_loop(listener: UnixListener, state: Arc<State>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let state = state.clone();
        let spawned = std::thread::Builder::new()
            .name("faultfs-control-conn".into())
            .spawn(move || serve_connection(stream, &state));
        if let Err(e) = spawned {
            eprintln!("faultfs: control: cannot serve a connection: {e}");
        }
    }
}

/// Answer each line of one connection until it closes, goes idle, or sends garbage.
fn serve_connection(stream: UnixStream, state: &State) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut raw = Vec::new();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = !raw.ends_with(b"\n") && raw.len() as u64 >= MAX_LINE;
        let reply = match std::str::from_utf8(&raw) {
            _ if too_long => "err command line too long".to_string(),
            Ok(line) => run_logged(state, line),
            Err(_) => "err command is not UTF-8".to_string(),
        };
        if writer.write_all(format!("{reply}\n").as_bytes()).is_err() || too_long {
            return;
        }
    }
}

/// Run a line, logging what changes state (not `status`/`ping`, which monitors poll).
fn run_logged(state: &State, line: &str) -> String {
    let reply = handle_line(state, line);
    let quiet = matches!(
        parse(line),
        Ok(Command::Status | Command::Ping | Command::Dirty)
    );
    if !quiet {
        eprintln!("faultfs: control: {} -> {reply}", line.trim());
    }
    reply
}

/// Send one command to the control socket at `socket`; the reply line.
pub fn request(socket: &Path, command: &str) -> anyhow::Result<String> {
    anyhow::ensure!(!command.contains('\n'), "a command is one line");
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connect to the control socket {}", socket.display()))?;
    stream.set_read_timeout(Some(REPLY_WAIT))?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .context("send the command")?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("read the reply")?;
    if reply.is_empty() {
        bail!("the control socket closed without a reply");
    }
    Ok(reply.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_commands() {
        assert_eq!(parse("power-loss"), Ok(Command::PowerLoss));
        assert_eq!(parse(" status \n"), Ok(Command::Status));
        assert_eq!(
            parse("fail write ENOSPC"),
            Ok(Command::Fail(Op::Write, Some(Injected::Enospc)))
        );
        assert_eq!(parse("fail fsync off"), Ok(Command::Fail(Op::Fsync, None)));
        assert_eq!(parse("fail clear"), Ok(Command::FailClear));
        assert_eq!(
            parse("flip dir/a b 12 7"),
            Ok(Command::Flip {
                path: "dir/a b".into(),
                offset: 12,
                bit: 7
            })
        );
    }

    #[test]
    fn rejects_malformed_commands() {
        for bad in [
            "",
            "   ",
            "power-loss now",
            "fail",
            "fail write",
            "fail read eio",
            "fail write eagain",
            "flip",
            "flip a",
            "flip a 1",
            "flip a 1 8",
            "flip a -1 0",
            "flip a x 0",
            "flip  1 2",
            "reboot",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
