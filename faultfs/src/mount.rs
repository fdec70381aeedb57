//! Running a mount: checks, the FUSE session on its threads, the control socket (opened only
//! once the mount is in place, so an answer to `ping` means the mount can be used), and a clean
//! end on SIGTERM/SIGINT/SIGHUP or when the filesystem is unmounted from outside: unmount (lazily
//! if it is busy), wait for the FUSE threads, write unsynced data back as a kernel would at
//! unmount, remove the socket.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use fuser::{Config, MountOption, Session, SessionUnmounter};
use nix::sys::signal::{SigSet, Signal};

use crate::control;
use crate::fs::FaultFs;
use crate::state::State;

/// How long to wait for the FUSE threads after unmounting before giving up on them.
const DRAIN: Duration = Duration::from_secs(10);

/// What `chat-faultfs mount` needs.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The directory whose content the mount shows (holds exactly the synced state).
    pub backing: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The control socket's path.
    pub control: PathBuf,
    /// FUSE worker threads.
    pub threads: usize,
}

/// Mount, serve until a signal or an outside unmount, then end cleanly. Blocks.
pub fn run(opts: &MountOptions) -> anyhow::Result<()> {
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = watch_signals()?;
    let (backing, mountpoint) = preflight(opts)?;
    raise_fd_limit();
    // Modes the kernel passes have the caller's umask applied already.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    control::clear_stale(&opts.control)?;
    let state = Arc::new(State::open(&backing)?);
    let (fuse, mut unmounter) = mount(state.clone(), &backing, &mountpoint, opts.threads)?;
    // Only once mounted: a client that gets an answer (`ping`) may use the mount at once.
    let server = match control::Server::start(&opts.control, state.clone()) {
        Ok(server) => server,
        Err(e) => {
            let _ = unmount(&mut unmounter, &mountpoint);
            drain(fuse);
            return Err(e);
        }
    };
    eprintln!(
        "faultfs: {} mounted over {} (control socket {})",
        mountpoint.display(),
        backing.display(),
        opts.control.display()
    );
    let unmounted = match wait_for_end(&signals, &fuse) {
        End::Signal(signal) => {
            eprintln!("faultfs: got {signal}; unmounting {}", mountpoint.display());
            unmount(&mut unmounter, &mountpoint)
        }
        End::Unmounted => {
            eprintln!("faultfs: {} was unmounted", mountpoint.display());
            Ok(())
        }
    };
    drain(fuse);
    write_back(&state);
    drop(server);
    unmounted
}

/// A mount served on background threads of the calling process, for tests that mount in their
/// own process: no signal is touched. Talk to it over its control socket ([`crate::request`]);
/// dropping it unmounts (lazily if busy) and writes unsynced data back, as [`run`] does at its
/// end — send `power-loss` first to end with it lost instead.
pub struct Mounted {
    state: Arc<State>,
    mountpoint: PathBuf,
    fuse: Option<JoinHandle<std::io::Result<()>>>,
    unmounter: SessionUnmounter,
    server: Option<control::Server>,
}

/// Mount as [`run`] does, but return once the mount and its control socket are up.
pub fn spawn(opts: &MountOptions) -> anyhow::Result<Mounted> {
    let (backing, mountpoint) = preflight(opts)?;
    control::clear_stale(&opts.control)?;
    let state = Arc::new(State::open(&backing)?);
    let (fuse, mut unmounter) = mount(state.clone(), &backing, &mountpoint, opts.threads)?;
    match control::Server::start(&opts.control, state.clone()) {
        Ok(server) => Ok(Mounted {
            state,
            mountpoint,
            fuse: Some(fuse),
            unmounter,
            server: Some(server),
        }),
        Err(e) => {
            let _ = unmount(&mut unmounter, &mountpoint);
            drain(fuse);
            Err(e)
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = unmount(&mut self.unmounter, &self.mountpoint) {
            eprintln!("faultfs: {e:#}");
        }
        if let Some(fuse) = self.fuse.take() {
            drain(fuse);
        }
        write_back(&self.state);
        self.server.take();
    }
}

/// Check the directories and the FUSE device; the canonical backing dir and mountpoint.
fn preflight(opts: &MountOptions) -> anyhow::Result<(PathBuf, PathBuf)> {
    let backing = canonical_dir(&opts.backing, "backing directory")?;
    let mountpoint = canonical_dir(&opts.mountpoint, "mountpoint")?;
    ensure!(
        !mountpoint.starts_with(&backing) && !backing.starts_with(&mountpoint),
        "the mountpoint {} and the backing directory {} must not contain each other",
        mountpoint.display(),
        backing.display()
    );
    if std::fs::metadata("/dev/fuse").is_err() {
        bail!("/dev/fuse is missing: load the fuse module (modprobe fuse), or give the container the device (--device /dev/fuse)");
    }
    Ok((backing, mountpoint))
}

fn canonical_dir(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let canonical = path
        .canonicalize()
        .with_context(|| format!("the {what} {}", path.display()))?;
    ensure!(
        canonical.is_dir(),
        "the {what} {} is not a directory",
        path.display()
    );
    Ok(canonical)
}

/// Each node holds a descriptor: allow as many as the hard limit lets us.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Block SIGTERM, SIGINT and SIGHUP and deliver them on a channel instead.
fn watch_signals() -> anyhow::Result<Receiver<Signal>> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block()
        .context("block the termination signals")?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("faultfs-signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                if tx.send(signal).is_err() {
                    return;
                }
            }
        })
        .context("start the signal thread")?;
    Ok(rx)
}

/// Mount `backing` at `mountpoint` and serve it on `threads` FUSE threads.
fn mount(
    state: Arc<State>,
    backing: &Path,
    mountpoint: &Path,
    threads: usize,
) -> anyhow::Result<(JoinHandle<std::io::Result<()>>, SessionUnmounter)> {
    let mut config = Config::default();
    let source = format!("faultfs:{}", backing.display()).replace([',', ' '], "_");
    config.mount_options = vec![
        MountOption::FSName(source),
        MountOption::Subtype("faultfs".into()),
    ];
    config.n_threads = Some(threads.max(1));
    let mut session =
        Session::new(FaultFs::new(state), mountpoint, &config).with_context(|| {
            format!(
                "mount FUSE at {} (as root, with /dev/fuse)",
                mountpoint.display()
            )
        })?;
    let unmounter = session.unmount_callable();
    let fuse = std::thread::Builder::new()
        .name("faultfs-fuse".into())
        .spawn(move || session.run())
        .context("start the FUSE session")?;
    Ok((fuse, unmounter))
}

/// Why serving ended.
enum End {
    /// A termination signal came.
    Signal(Signal),
    /// The session ended on its own: someone unmounted the filesystem.
    Unmounted,
}

/// Wait for a termination signal or for the session to end on its own.
fn wait_for_end(signals: &Receiver<Signal>, fuse: &JoinHandle<std::io::Result<()>>) -> End {
    loop {
        match signals.recv_timeout(Duration::from_millis(200)) {
            Ok(signal) => return End::Signal(signal),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                if fuse.is_finished() {
                    return End::Unmounted;
                }
            }
        }
    }
}

/// Unmount; if something still uses the mount, detach it lazily (it goes when they let go).
fn unmount(unmounter: &mut SessionUnmounter, mountpoint: &Path) -> anyhow::Result<()> {
    match unmounter.unmount() {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            eprintln!(
                "faultfs: {} is busy; detaching it lazily",
                mountpoint.display()
            );
            nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("detach {}", mountpoint.display()))
        }
        Err(e) => Err(e).with_context(|| format!("unmount {}", mountpoint.display())),
    }
}

/// Wait (a while) for the FUSE threads to finish.
fn drain(fuse: JoinHandle<std::io::Result<()>>) {
    let deadline = Instant::now() + DRAIN;
    while !fuse.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !fuse.is_finished() {
        eprintln!("faultfs: the FUSE session is still busy after unmounting; leaving it");
        return;
    }
    match fuse.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("faultfs: the FUSE session ended with an error: {e}"),
        Err(_) => eprintln!("faultfs: the FUSE session panicked"),
    }
}

/// A clean unmount writes unsynced data back, as a kernel would.
fn write_back(state: &State) {
    let dirty = state.dirty_totals();
    if dirty.files == 0 {
        return;
    }
    match state.sync_all() {
        Ok(n) => eprintln!(
            "faultfs: wrote back {n} files ({} unsynced bytes)",
            dirty.bytes
        ),
        Err(e) => eprintln!("faultfs: writeback at exit: {e:#}"),
    }
}
