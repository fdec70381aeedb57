//! Test harness: mounts a real faultfs (the `chat-faultfs` binary) over a temporary backing
//! directory, talks to its control socket, and unmounts it at the end. The tests need root and
//! /dev/fuse; without them they fail with a message saying so (they never skip).

#![allow(dead_code)]

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running mount.
pub struct Mount {
    child: Option<Child>,
    pub mnt: PathBuf,
    pub backing: PathBuf,
    pub sock: PathBuf,
    log: PathBuf,
    // Last: removed after the mount is gone.
    dir: tempfile::TempDir,
}

/// Fail (not skip) unless the tests can mount FUSE.
pub fn require_root_and_fuse() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the faultfs tests mount a FUSE filesystem with mount(2): run them as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "the faultfs tests need /dev/fuse (modprobe fuse, or give the container the device)"
    );
}

/// Whether `path` is a mountpoint now.
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = path.to_string_lossy();
    info.lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}

impl Mount {
    /// Mount a fresh, empty backing directory.
    pub fn start() -> Mount {
        require_root_and_fuse();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().canonicalize().unwrap();
        let (backing, mnt) = (root.join("backing"), root.join("mnt"));
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mnt).unwrap();
        let mut mount = Mount {
            child: None,
            mnt,
            backing,
            sock: root.join("ctl.sock"),
            log: root.join("faultfs.log"),
            dir,
        };
        mount.spawn();
        mount
    }

    fn spawn(&mut self) {
        let log = fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chat-faultfs"))
            .arg("mount")
            .arg("--backing")
            .arg(&self.backing)
            .arg("--mountpoint")
            .arg(&self.mnt)
            .arg("--control")
            .arg(&self.sock)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start chat-faultfs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if is_mounted(&self.mnt) && faultfs::request(&self.sock, "ping").is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "chat-faultfs exited ({status}) before mounting:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("chat-faultfs did not mount within 15 s:\n{}", self.log());
    }

    /// What the filesystem process printed.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The same path in the backing directory (what was synced).
    pub fn on_disk(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    /// Send a control command; the reply.
    pub fn ctl(&self, command: &str) -> String {
        faultfs::request(&self.sock, command).expect("control socket")
    }

    /// Send a control command that must succeed; the reply.
    pub fn ok(&self, command: &str) -> String {
        let reply = self.ctl(command);
        assert!(reply.starts_with("ok"), "{command:?} answered {reply:?}");
        reply
    }

    /// One numeric `key=value` field of the `status` reply.
    pub fn status(&self, key: &str) -> u64 {
        field(&self.ok("status"), key)
    }

    /// SIGTERM the filesystem and wait for it; it must exit cleanly and leave no mount.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        terminate(&mut child);
        let status = child.wait().unwrap();
        assert!(
            !is_mounted(&self.mnt),
            "still mounted after exit:\n{}",
            self.log()
        );
        status
    }
}

/// SIGTERM a child (by its pid).
fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.mnt) {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The numeric value of `key=` in a reply.
pub fn field(reply: &str, key: &str) -> u64 {
    let prefix = format!("{key}=");
    reply
        .split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {reply:?}"))
}

/// A recognisable byte pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The errno of an I/O error.
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Whether a process exited by itself with status 0.
pub fn clean_exit(status: ExitStatus) -> bool {
    status.success() && status.signal().is_none()
}
