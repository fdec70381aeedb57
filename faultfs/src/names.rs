//! Namespace operations: lookup, create nodes, unlink, rename, links, directories. They go to
//! the backing directory at once (no delay: only file data is held back until fsync), through
//! `*at` calls on the parent's descriptor. A file whose last name goes while it has unsynced
//! data loses that data once it is no longer open.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirEntryExt;
use std::sync::Arc;

use fuser::{FileAttr, FileType, RenameFlags};
use nix::fcntl::{AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::Statvfs;
use nix::unistd::{AccessFlags, UnlinkatFlags};

use crate::faults::Op;
use crate::state::State;
use crate::sys::{self, OrErrno, Res};
use crate::table::{lock, Handle, Listed, Node, OpenDir};

impl State {
    /// `lookup`: the child `name` of `parent`, counted as one more kernel lookup.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Res<FileAttr> {
        if name == "." || name == ".." {
            return Err(fuser::Errno::ENOENT);
        }
        let dir = self.node(parent)?;
        let st = nix::sys::stat::fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).errno()?;
        let key = sys::key(&st);
        let node = lock(&self.table).remember(key, sys::file_type(st.st_mode), || {
            open_path(&dir, name, key)
        })?;
        Ok(self.attr_of(&node, &st))
    }

    /// `mknod` (regular files, fifos, sockets; devices too, as root).
    pub fn mknod(&self, parent: u64, name: &OsStr, mode: u32, rdev: u32) -> Res<FileAttr> {
        let dir = self.node(parent)?;
        let kind = SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits());
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        nix::sys::stat::mknodat(&dir.fd, name, kind, perm, u64::from(rdev)).errno()?;
        self.lookup(parent, name)
    }

    /// `mkdir`.
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32) -> Res<FileAttr> {
        let dir = self.node(parent)?;
        nix::sys::stat::mkdirat(&dir.fd, name, Mode::from_bits_truncate(mode & 0o7777)).errno()?;
        self.lookup(parent, name)
    }

    /// `symlink`.
    pub fn symlink(&self, parent: u64, name: &OsStr, target: &std::path::Path) -> Res<FileAttr> {
        let dir = self.node(parent)?;
        nix::unistd::symlinkat(target, &dir.fd, name).errno()?;
        self.lookup(parent, name)
    }

    /// `link`: another name for `ino` (the same node, so the same unsynced data).
    pub fn link(&self, ino: u64, parent: u64, name: &OsStr) -> Res<FileAttr> {
        let node = self.node(ino)?;
        let dir = self.node(parent)?;
        nix::unistd::linkat(
            AT_FDCWD,
            sys::proc_path(&node.fd).as_str(),
            &dir.fd,
            name,
            AtFlags::AT_SYMLINK_FOLLOW,
        )
        .errno()?;
        self.lookup(parent, name)
    }

    /// `readlink`.
    pub fn readlink(&self, ino: u64) -> Res<OsString> {
        let node = self.node(ino)?;
        nix::fcntl::readlinkat(&node.fd, "").errno()
    }

    /// `access`, checked by the backing filesystem.
    pub fn access(&self, ino: u64, mask: i32) -> Res<()> {
        let node = self.node(ino)?;
        if node.kind == FileType::Symlink {
            return Ok(());
        }
        nix::unistd::faccessat(
            AT_FDCWD,
            sys::proc_path(&node.fd).as_str(),
            AccessFlags::from_bits_truncate(mask),
            AtFlags::empty(),
        )
        .errno()
    }

    /// The live node behind `dir/name`, if any (to settle its unsynced data after the name
    /// goes).
    fn child(&self, dir: &Node, name: &OsStr) -> Option<Arc<Node>> {
        let st = nix::sys::stat::fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        lock(&self.table).by_key(sys::key(&st))
    }

    /// `unlink`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Res<()> {
        let dir = self.node(parent)?;
        let victim = self.child(&dir, name);
        nix::unistd::unlinkat(&dir.fd, name, UnlinkatFlags::NoRemoveDir).errno()?;
        if let Some(node) = victim {
            self.discard_if_unlinked(&node);
        }
        Ok(())
    }

    /// `rmdir`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Res<()> {
        let dir = self.node(parent)?;
        nix::unistd::unlinkat(&dir.fd, name, UnlinkatFlags::RemoveDir).errno()
    }

    /// `rename`, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE` (other flags: EINVAL). The
    /// renamed file keeps its node and its unsynced data; a file replaced by it is unlinked.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        let supported = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
        if !supported.contains(flags) {
            return Err(fuser::Errno::EINVAL);
        }
        let from = self.node(parent)?;
        let to = self.node(new_parent)?;
        let replaced = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            None
        } else {
            self.child(&to, new_name)
        };
        let nix_flags = nix::fcntl::RenameFlags::from_bits_truncate(flags.bits());
        nix::fcntl::renameat2(&from.fd, name, &to.fd, new_name, nix_flags).errno()?;
        if let Some(node) = replaced {
            self.discard_if_unlinked(&node);
        }
        Ok(())
    }

    /// `opendir`.
    pub fn opendir(&self, ino: u64) -> Res<u64> {
        let node = self.node(ino)?;
        if node.kind != FileType::Directory {
            return Err(fuser::Errno::ENOTDIR);
        }
        let file = sys::reopen(&node.fd, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        Ok(self.handles.insert(Handle::Dir(Arc::new(OpenDir {
            node,
            file,
            listing: Default::default(),
        }))))
    }

    /// The entries of open directory `fh` from `offset` on (the listing is read afresh at 0).
    pub fn readdir(&self, fh: u64, offset: u64) -> Res<Vec<Listed>> {
        let dir = self.handles.dir(fh)?;
        let mut listing = lock(&dir.listing);
        if offset == 0 {
            *listing = self.list(&dir)?;
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(listing.iter().skip(skip).cloned().collect())
    }

    /// Read the backing directory behind `dir`, `.` and `..` first.
    fn list(&self, dir: &OpenDir) -> Res<Vec<Listed>> {
        let dot = |name: &str, ino| Listed {
            ino,
            kind: FileType::Directory,
            name: name.into(),
        };
        let mut listing = vec![dot(".", dir.node.ino), dot("..", crate::table::ROOT_INO)];
        for entry in std::fs::read_dir(sys::proc_path(&dir.file)).errno()? {
            let entry = entry.errno()?;
            let kind = entry
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            let known = lock(&self.table).by_key((dir.node.key.0, entry.ino()));
            listing.push(Listed {
                ino: known.map_or(entry.ino(), |n| n.ino),
                kind,
                name: entry.file_name(),
            });
        }
        Ok(listing)
    }

    /// `fsyncdir`: sync the backing directory (namespace changes are already there).
    pub fn fsyncdir(&self, fh: u64, datasync: bool) -> Res<()> {
        self.injected(Op::Fsync)?;
        let dir = self.handles.dir(fh)?;
        if datasync {
            nix::unistd::fdatasync(&dir.file).errno()
        } else {
            nix::unistd::fsync(&dir.file).errno()
        }
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) {
        if let Some(node) = self.handles.remove(fh) {
            lock(&self.table).remove_if_unused(&node);
        }
    }

    /// `statfs` of the backing filesystem.
    pub fn statfs(&self) -> Res<Statvfs> {
        let root = self.node(crate::table::ROOT_INO)?;
        nix::sys::statvfs::fstatvfs(&root.fd).errno()
    }
}

/// An `O_PATH` descriptor of `dir/name`, which must still be the backing inode `key` (ESTALE if
/// the name was replaced meanwhile).
fn open_path(dir: &Node, name: &OsStr, key: crate::table::Key) -> Res<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd: OwnedFd = nix::fcntl::openat(&dir.fd, name, flags, Mode::empty()).errno()?;
    if sys::key(&sys::stat_fd(&fd)?) != key {
        return Err(fuser::Errno::ESTALE);
    }
    Ok(fd)
}
