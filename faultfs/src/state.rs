//! The filesystem's shared state and its file data operations: attributes, open/create, read,
//! write, truncate, fallocate, fsync and release. Unsynced data stays in each node's [`Dirty`];
//! only `fsync`/`fdatasync` (or a writeback at clean shutdown, or the `sync` control command)
//! puts it into the backing file. Namespace operations are in `names.rs`, the control
//! operations (power loss, bit flips, status) in `admin.rs`.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use fuser::{FileAttr, FileType, TimeOrNow};
use nix::fcntl::{FallocateFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

use crate::dirty::Dirty;
use crate::faults::{Faults, Op};
use crate::sys::{self, OrErrno, Res};
use crate::table::{lock, Handle, Handles, Node, OpenFile, Table};

/// Largest file offset accepted (what `off_t` holds).
const MAX_OFFSET: u64 = i64::MAX as u64;

/// Everything the FUSE threads and the control socket share.
#[derive(Debug)]
pub struct State {
    /// The backing directory.
    pub root: PathBuf,
    pub(crate) table: Mutex<Table>,
    pub(crate) handles: Handles,
    pub(crate) faults: Mutex<Faults>,
    /// FUSE requests served.
    pub ops: AtomicU64,
}

/// The attribute changes of a `setattr`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New length (a pending truncate or extension).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeOrNow>,
    /// New modification time.
    pub mtime: Option<TimeOrNow>,
}

impl State {
    /// State over the backing directory `root`.
    pub fn open(root: &Path) -> anyhow::Result<State> {
        let fd: OwnedFd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("open the backing directory {}", root.display()))?;
        let st = nix::sys::stat::fstat(&fd)
            .with_context(|| format!("stat the backing directory {}", root.display()))?;
        Ok(State {
            root: root.to_path_buf(),
            table: Mutex::new(Table::new(fd, sys::key(&st))),
            handles: Handles::default(),
            faults: Mutex::new(Faults::default()),
            ops: AtomicU64::new(0),
        })
    }

    /// The node with our inode number `ino`.
    pub fn node(&self, ino: u64) -> Res<Arc<Node>> {
        lock(&self.table).get(ino)
    }

    /// Fail with the injected errno if `op` is set to fail.
    pub(crate) fn injected(&self, op: Op) -> Res<()> {
        match lock(&self.faults).get(op) {
            Some(failure) => Err(failure.errno()),
            None => Ok(()),
        }
    }

    /// Attributes of `node` as the backing `st` shows it, with its pending size over it.
    pub(crate) fn attr_of(&self, node: &Node, st: &FileStat) -> FileAttr {
        let mut attr = sys::attr(node.ino, st);
        if let Some(d) = node.data().as_ref() {
            attr.size = d.size();
            attr.mtime = attr.mtime.max(d.mtime());
            attr.ctime = attr.ctime.max(d.mtime());
        }
        attr
    }

    /// `getattr`.
    pub fn getattr(&self, ino: u64) -> Res<FileAttr> {
        let node = self.node(ino)?;
        let st = sys::stat_fd(&node.fd)?;
        Ok(self.attr_of(&node, &st))
    }

    /// `setattr`: a size change stays pending; mode, owner and times go to the backing inode.
    pub fn setattr(&self, ino: u64, set: SetAttr) -> Res<FileAttr> {
        let node = self.node(ino)?;
        if let Some(size) = set.size {
            self.truncate(&node, size)?;
        }
        if let Some(mode) = set.mode {
            chmod(&node, mode)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            chown(&node, set.uid, set.gid)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            utimens(&node, set.atime, set.mtime)?;
        }
        self.getattr(ino)
    }

    /// Make `node`'s pending length `size`.
    pub(crate) fn truncate(&self, node: &Node, size: u64) -> Res<()> {
        match node.kind {
            FileType::RegularFile => {}
            FileType::Directory => return Err(fuser::Errno::EISDIR),
            _ => return Err(fuser::Errno::EINVAL),
        }
        if size > MAX_OFFSET {
            return Err(fuser::Errno::EFBIG);
        }
        let mut data = node.data();
        if data.is_none() && synced_size(node)? == size {
            return Ok(());
        }
        dirty_mut(&mut data, node)?.set_size(size);
        Ok(())
    }

    /// `open` of a regular file: the backing file is opened with the caller's access mode only;
    /// `O_TRUNC` becomes a pending truncate, `O_APPEND` and `O_SYNC` are done here.
    pub fn open_file(&self, ino: u64, flags: i32) -> Res<u64> {
        let node = self.node(ino)?;
        if node.kind != FileType::RegularFile {
            return Err(fuser::Errno::EINVAL);
        }
        let file = sys::reopen(&node.fd, access_mode(flags))?;
        self.finish_open(node, file, flags)
    }

    /// `create`: make the backing file (directly: namespace changes are not delayed), open it.
    pub fn create(&self, parent: u64, name: &OsStr, mode: u32, flags: i32) -> Res<(FileAttr, u64)> {
        let dir = self.node(parent)?;
        let oflags = access_mode(flags)
            | OFlag::O_CREAT
            | OFlag::O_CLOEXEC
            | (OFlag::from_bits_truncate(flags) & OFlag::O_EXCL);
        let fd = nix::fcntl::openat(
            &dir.fd,
            name,
            oflags,
            Mode::from_bits_truncate(mode & 0o7777),
        )
        .errno()?;
        let file = File::from(fd);
        let st = nix::sys::stat::fstat(&file).errno()?;
        let node = lock(&self.table).remember(sys::key(&st), FileType::RegularFile, || {
            sys::reopen(&file, OFlag::O_PATH).map(OwnedFd::from)
        })?;
        let fh = self.finish_open(node.clone(), file, flags)?;
        let st = sys::stat_fd(&node.fd)?;
        Ok((self.attr_of(&node, &st), fh))
    }

    fn finish_open(&self, node: Arc<Node>, file: File, flags: i32) -> Res<u64> {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writable && flags & libc::O_TRUNC != 0 {
            self.truncate(&node, 0)?;
        }
        Ok(self.handles.insert(Handle::File(Arc::new(OpenFile {
            node,
            file,
            writable,
            append: flags & libc::O_APPEND != 0,
            sync: flags & libc::O_DSYNC != 0,
        }))))
    }

    /// `read`: the backing bytes with the unsynced ones over them. A clean file is read
    /// without holding its lock, so readers of one file do not wait for each other.
    pub fn read(&self, fh: u64, off: u64, size: u32) -> Res<Vec<u8>> {
        let f = self.handles.file(fh)?;
        {
            let data = f.node.data();
            if let Some(d) = data.as_ref() {
                return d
                    .read(off, size as usize, |buf, at| {
                        sys::read_full(&f.file, buf, at)
                    })
                    .errno();
            }
        }
        read_upto(&f.file, off, size as usize).errno()
    }

    /// `write`: kept in memory (unless the file was opened `O_SYNC`/`O_DSYNC`). An injected
    /// failure stores nothing.
    pub fn write(&self, fh: u64, off: u64, bytes: &[u8]) -> Res<u32> {
        self.injected(Op::Write)?;
        let f = self.handles.file(fh)?;
        let len = u32::try_from(bytes.len()).map_err(|_| fuser::Errno::EINVAL)?;
        if len == 0 {
            return Ok(0);
        }
        {
            let mut data = f.node.data();
            let d = dirty_mut(&mut data, &f.node)?;
            let off = if f.append { d.size() } else { off };
            match off.checked_add(bytes.len() as u64) {
                Some(end) if end <= MAX_OFFSET => d.write(off, bytes),
                _ => return Err(fuser::Errno::EFBIG),
            }
        }
        if f.sync {
            self.fsync(fh, true)?;
        }
        Ok(len)
    }

    /// `fallocate`: mode 0 extends the pending length (and reserves the blocks in the backing
    /// file without changing its length); `FALLOC_FL_KEEP_SIZE` only reserves. Other modes are
    /// not supported.
    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> Res<()> {
        self.injected(Op::Write)?;
        let f = self.handles.file(fh)?;
        let keep_size = FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if mode & !keep_size.bits() != 0 {
            return Err(fuser::Errno::EOPNOTSUPP);
        }
        let end = off
            .checked_add(len)
            .filter(|&e| e <= MAX_OFFSET)
            .ok_or(fuser::Errno::EFBIG)?;
        nix::fcntl::fallocate(&f.file, keep_size, off as i64, len as i64).errno()?;
        if mode & keep_size.bits() != 0 {
            return Ok(());
        }
        let mut data = f.node.data();
        let current = match data.as_ref() {
            Some(d) => d.size(),
            None => synced_size(&f.node)?,
        };
        if end > current {
            dirty_mut(&mut data, &f.node)?.set_size(end);
        }
        Ok(())
    }

    /// `fsync`/`fdatasync` of an open file: its unsynced data goes to the backing file, which
    /// is then synced. An injected or real failure leaves the data dirty (so a later sync that
    /// succeeds still writes it).
    pub fn fsync(&self, fh: u64, datasync: bool) -> Res<()> {
        self.injected(Op::Fsync)?;
        let f = self.handles.file(fh)?;
        let via = f.writable.then_some(&f.file);
        self.flush_node(&f.node, via, datasync)
    }

    /// Write `node`'s unsynced data to the backing file and sync it, through `via` if given (a
    /// writable descriptor of it) or a fresh one.
    pub(crate) fn flush_node(&self, node: &Node, via: Option<&File>, datasync: bool) -> Res<()> {
        let mut data = node.data();
        let reopened;
        let file = match via {
            Some(file) => file,
            None => {
                reopened = sys::reopen(&node.fd, OFlag::O_WRONLY)?;
                &reopened
            }
        };
        if let Some(d) = data.as_ref() {
            apply(file, d).errno()?;
        }
        sync_file(file, datasync)?;
        *data = None;
        Ok(())
    }

    /// `release`: closing never syncs. A file that was unlinked loses its unsynced data once
    /// its last handle goes.
    pub fn release(&self, fh: u64) {
        if let Some(node) = self.handles.remove(fh) {
            self.discard_if_unlinked(&node);
            lock(&self.table).remove_if_unused(&node);
        }
    }

    /// Drop the unsynced data of a regular file that is no longer open and no longer has a
    /// name in the backing directory: nobody can read it, nothing will sync it.
    pub(crate) fn discard_if_unlinked(&self, node: &Node) {
        if node.kind != FileType::RegularFile || node.open.load(Ordering::SeqCst) > 0 {
            return;
        }
        if sys::stat_fd(&node.fd).is_ok_and(|st| st.st_nlink == 0) {
            *node.data() = None;
        }
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let kept = lock(&self.table).forget(ino, n);
        if let Some(node) = kept {
            self.discard_if_unlinked(&node);
            lock(&self.table).remove_if_unused(&node);
        }
    }
}

/// The access mode part of open flags, as flags for the backing file.
fn access_mode(flags: i32) -> OFlag {
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => OFlag::O_WRONLY,
        libc::O_RDWR => OFlag::O_RDWR,
        _ => OFlag::O_RDONLY,
    }
}

/// The length of `node`'s backing file.
fn synced_size(node: &Node) -> Res<u64> {
    Ok(sys::stat_fd(&node.fd)?.st_size.max(0) as u64)
}

/// The node's dirty state, made (matching the backing file) if it had none.
fn dirty_mut<'a>(data: &'a mut Option<Dirty>, node: &Node) -> Res<&'a mut Dirty> {
    if data.is_none() {
        *data = Some(Dirty::new(synced_size(node)?));
    }
    data.as_mut().ok_or(fuser::Errno::EIO)
}

/// Read up to `len` bytes at `off`, fewer at the end of the file.
fn read_upto(file: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Make the backing `file` what `d` describes: cut it to the floor, set the length, write the
/// extents.
fn apply(file: &File, d: &Dirty) -> io::Result<()> {
    let current = file.metadata()?.len();
    if d.floor() < current {
        file.set_len(d.floor())?;
    }
    if d.size() != current.min(d.floor()) {
        file.set_len(d.size())?;
    }
    for (off, bytes) in d.extents() {
        sys::write_full(file, bytes, off)?;
    }
    Ok(())
}

fn sync_file(file: &File, datasync: bool) -> Res<()> {
    if datasync {
        nix::unistd::fdatasync(file).errno()
    } else {
        nix::unistd::fsync(file).errno()
    }
}

fn chmod(node: &Node, mode: u32) -> Res<()> {
    if node.kind == FileType::Symlink {
        return Err(fuser::Errno::EOPNOTSUPP);
    }
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        sys::proc_path(&node.fd).as_str(),
        Mode::from_bits_truncate(mode & 0o7777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .errno()
}

fn chown(node: &Node, uid: Option<u32>, gid: Option<u32>) -> Res<()> {
    nix::unistd::fchownat(
        node.fd.as_fd(),
        "",
        uid.map(nix::unistd::Uid::from_raw),
        gid.map(nix::unistd::Gid::from_raw),
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
    .errno()
}

fn utimens(node: &Node, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> Res<()> {
    if node.kind == FileType::Symlink {
        // Times of a symlink would need its parent; nothing here relies on them.
        return Ok(());
    }
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        sys::proc_path(&node.fd).as_str(),
        &timespec(atime)?,
        &timespec(mtime)?,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .errno()
}

fn timespec(t: Option<TimeOrNow>) -> Res<nix::sys::time::TimeSpec> {
    use nix::sys::time::TimeSpec;
    match t {
        None => Ok(TimeSpec::UTIME_OMIT),
        Some(TimeOrNow::Now) => Ok(TimeSpec::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(at)) => at
            .duration_since(std::time::UNIX_EPOCH)
            .map(TimeSpec::from)
            .map_err(|_| fuser::Errno::EINVAL),
    }
}
