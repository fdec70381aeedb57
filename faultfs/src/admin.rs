//! The operations behind the control socket: a simulated power loss, bit rot in a backing file,
//! injected failures, a full writeback, and the status counters.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path};
use std::sync::atomic::Ordering;

use anyhow::{bail, ensure, Context};

use crate::faults::{Injected, Op};
use crate::state::State;
use crate::table::lock;

/// What a power loss threw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Files that had unsynced changes.
    pub files: u64,
    /// Unsynced written bytes.
    pub bytes: u64,
}

/// Unsynced state across all files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirtyTotals {
    /// Files with unsynced changes.
    pub files: u64,
    /// Unsynced written bytes.
    pub bytes: u64,
}

impl State {
    /// Drop every file's unsynced data and pending length: each file reverts to exactly what
    /// was last fsynced (a file never synced is empty; names stay, they were never delayed).
    pub fn power_loss(&self) -> Dropped {
        let nodes = lock(&self.table).nodes();
        let mut dropped = Dropped::default();
        for node in nodes {
            if let Some(d) = node.data().take() {
                dropped.files += 1;
                dropped.bytes += d.dirty_bytes();
            }
        }
        lock(&self.table).sweep();
        dropped
    }

    /// Write every file's unsynced data to its backing file and sync it (what a clean unmount
    /// does). Injected failures do not apply. Returns how many files were written; the first
    /// error stops nothing, it is returned after the others were tried.
    pub fn sync_all(&self) -> anyhow::Result<u64> {
        let nodes = lock(&self.table).nodes();
        let mut synced = 0;
        let mut first_error = None;
        for node in nodes.iter().filter(|n| n.is_dirty()) {
            match self.flush_node(node, None, false) {
                Ok(()) => synced += 1,
                Err(e) => {
                    first_error.get_or_insert(format!("inode {}: errno {}", node.ino, e.code()));
                }
            }
        }
        lock(&self.table).sweep();
        match first_error {
            Some(e) => bail!("some files could not be written back ({e})"),
            None => Ok(synced),
        }
    }

    /// Unsynced files and bytes.
    pub fn dirty_totals(&self) -> DirtyTotals {
        let nodes = lock(&self.table).nodes();
        let mut totals = DirtyTotals::default();
        for node in nodes {
            if let Some(d) = node.data().as_ref() {
                totals.files += 1;
                totals.bytes += d.dirty_bytes();
            }
        }
        totals
    }

    /// The files with unsynced changes: path (relative to the backing directory), unsynced
    /// bytes and pending length of each.
    pub fn dirty_files(&self) -> Vec<(String, u64, u64)> {
        let nodes = lock(&self.table).nodes();
        let mut files = Vec::new();
        for node in nodes {
            let Some((bytes, size)) = node.data().as_ref().map(|d| (d.dirty_bytes(), d.size()))
            else {
                continue;
            };
            files.push((self.name_of(&node.fd), bytes, size));
        }
        files.sort();
        files
    }

    /// Where the inode behind `fd` is now, relative to the backing directory (as the kernel
    /// names it; an unlinked file ends in " (deleted)").
    fn name_of(&self, fd: &std::os::fd::OwnedFd) -> String {
        let Ok(path) = std::fs::read_link(crate::sys::proc_path(fd)) else {
            return "?".to_string();
        };
        let rel = path.strip_prefix(&self.root).unwrap_or(&path);
        rel.to_string_lossy().into_owned()
    }

    /// Make `op` fail with `with` from now on (`None`: succeed again).
    pub fn set_fault(&self, op: Op, with: Option<Injected>) {
        lock(&self.faults).set(op, with);
    }

    /// End every injected failure.
    pub fn clear_faults(&self) {
        *lock(&self.faults) = Default::default();
    }

    /// One line of counters: unsynced files and bytes, failures in force, requests served.
    pub fn status(&self) -> String {
        let totals = self.dirty_totals();
        let faults = *lock(&self.faults);
        let nodes = lock(&self.table).len();
        format!(
            "dirty_files={} dirty_bytes={} {} ops={} inodes={} open_handles={}",
            totals.files,
            totals.bytes,
            faults,
            self.ops.load(Ordering::Relaxed),
            nodes,
            self.handles.len(),
        )
    }

    /// Flip bit `bit` of byte `offset` of the file at `rel` (relative to the backing
    /// directory): in the backing file, as bit rot on the disk would, and in the unsynced data
    /// if a written extent covers it (so the next fsync does not quietly repair it). An offset
    /// neither on disk nor in unsynced data is an error. Returns a description of what changed.
    pub fn flip(&self, rel: &str, offset: u64, bit: u8) -> anyhow::Result<String> {
        ensure!(bit < 8, "bit must be 0-7, got {bit}");
        let path = self.inside(rel)?;
        let file = open_regular(&path)?;
        let meta = file
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        let node = lock(&self.table).by_key((meta.dev(), meta.ino()));
        let mut data = node.as_deref().map(|n| n.data());
        let on_disk = offset < meta.len();
        if on_disk {
            flip_on_disk(&file, offset, bit)
                .with_context(|| format!("flip in {}", path.display()))?;
        }
        let unsynced = data
            .as_mut()
            .and_then(|d| d.as_mut())
            .is_some_and(|d| d.flip(offset, bit));
        if !on_disk && !unsynced {
            bail!(
                "offset {offset} is out of range: {rel} holds {} bytes on disk and no unsynced byte there",
                meta.len()
            );
        }
        Ok(format!(
            "flipped bit {bit} of byte {offset} of {rel} on_disk={on_disk} unsynced={unsynced}"
        ))
    }

    /// `rel` as a path inside the backing directory (no absolute paths, no `..`).
    fn inside(&self, rel: &str) -> anyhow::Result<std::path::PathBuf> {
        let rel_path = Path::new(rel);
        let plain = rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        ensure!(
            !rel.is_empty() && plain,
            "path must be relative to the mount, without '..': {rel:?}"
        );
        Ok(self.root.join(rel_path))
    }
}

/// Open a regular file for reading and writing, refusing a symlink as the last component.
fn open_regular(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?;
    ensure!(meta.is_file(), "{} is not a regular file", path.display());
    Ok(file)
}

fn flip_on_disk(file: &File, offset: u64, bit: u8) -> std::io::Result<()> {
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset)?;
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, offset)
}
