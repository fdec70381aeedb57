//! The nodes' disks, for the power and disk nemeses: each slot's data dir is a `chat-faultfs`
//! mount (the `faultfs` crate) over `n<slot>.disk/`. The filesystem keeps what was written but
//! not fsynced in its own memory, so a power loss — the node killed, then that memory dropped —
//! loses exactly what a real one would; it also makes writes or fsyncs fail (EIO, ENOSPC) and
//! flips bits in stored files. The harness talks to each mount over its control socket
//! (`n<slot>.ctl`, one line each way, through `faultfs::request`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a mount may take to answer its first ping.
const MOUNT_WAIT: Duration = Duration::from_secs(15);

struct Mount {
    mountpoint: PathBuf,
    control: PathBuf,
    child: Child,
}

/// One faultfs mount per slot, unmounted when dropped.
pub struct Disks {
    mounts: Vec<Mount>,
}

impl Disks {
    /// Mount a faultfs over `n<slot>.disk/` at `n<slot>/` in `dir` for slots 1..=`n`.
    pub fn mount(faultfs: &Path, dir: &Path, n: u64) -> anyhow::Result<Disks> {
        anyhow::ensure!(
            faultfs.exists(),
            "no chat-faultfs at {} (build it: cargo build --release -p faultfs); the power and \
             disk nemeses need it",
            faultfs.display()
        );
        let mut disks = Disks { mounts: Vec::new() };
        for slot in 1..=n {
            let backing = dir.join(format!("n{slot}.disk"));
            let mountpoint = dir.join(format!("n{slot}"));
            let control = dir.join(format!("n{slot}.ctl"));
            std::fs::create_dir_all(&backing)?;
            std::fs::create_dir_all(&mountpoint)?;
            let log = std::fs::File::create(dir.join(format!("n{slot}.faultfs.log")))?;
            let child = Command::new(faultfs)
                .arg("mount")
                .arg("--backing")
                .arg(&backing)
                .arg("--mountpoint")
                .arg(&mountpoint)
                .arg("--control")
                .arg(&control)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("start {}", faultfs.display()))?;
            disks.mounts.push(Mount {
                mountpoint,
                control,
                child,
            });
            disks.wait_mounted(slot)?;
        }
        Ok(disks)
    }

    fn wait_mounted(&mut self, slot: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + MOUNT_WAIT;
        loop {
            if self.command(slot, "ping").is_ok() {
                return Ok(());
            }
            let mount = &mut self.mounts[slot as usize - 1];
            if let Ok(Some(status)) = mount.child.try_wait() {
                anyhow::bail!(
                    "chat-faultfs for slot {slot} exited ({status}) before mounting {}: see its \
                     log beside it (needs root and /dev/fuse)",
                    mount.mountpoint.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "chat-faultfs for slot {slot} did not answer within {MOUNT_WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `command` to slot `slot`'s mount; its `ok` reply without the `ok`.
    pub fn command(&self, slot: u64, command: &str) -> anyhow::Result<String> {
        let reply = faultfs::request(&self.mounts[slot as usize - 1].control, command)?;
        match reply.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => anyhow::bail!("faultfs of slot {slot}: {command:?} answered {reply:?}"),
        }
    }

    /// Drop slot `slot`'s unsynced data (its node must be dead); the bytes dropped.
    pub fn power_loss(&self, slot: u64) -> anyhow::Result<u64> {
        let reply = self.command(slot, "power-loss")?;
        Ok(reply
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("dropped_bytes="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// End every injected failure.
    pub fn heal(&self) -> anyhow::Result<()> {
        for slot in 1..=self.mounts.len() as u64 {
            self.command(slot, "fail clear")?;
        }
        Ok(())
    }
}

impl Drop for Disks {
    /// SIGTERM each mount (it unmounts and exits), and make sure the mount point is free.
    fn drop(&mut self) {
        for mount in &mut self.mounts {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(mount.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !matches!(mount.child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = mount.child.kill();
            let _ = mount.child.wait();
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&mount.mountpoint)
                .stderr(Stdio::null())
                .status();
        }
    }
}
