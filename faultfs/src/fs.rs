//! The FUSE side: `fuser::Filesystem` over [`State`]. Each request is counted, run under a
//! panic guard (a panic answers EIO through the dropped reply instead of killing the loop),
//! and answered with the result or its errno. Requests not implemented here get fuser's
//! defaults (ENOSYS, which the kernel takes as "not supported").
//!
//! Every file is opened with `FOPEN_DIRECT_IO`, so the kernel page cache never holds file data
//! (it would hide what a power loss drops). Attributes are not cached (TTL 0: sizes change
//! behind the kernel's back at a power loss); names are cached for a second (they only change
//! through the kernel).

use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::state::{SetAttr, State};
use crate::sys::Res;

/// How long the kernel may cache attributes: never (see the module docs).
const ATTR_TTL: Duration = Duration::ZERO;

/// How long the kernel may cache a name → inode entry.
const ENTRY_TTL: Duration = Duration::from_secs(1);

/// The `fuser` filesystem.
#[derive(Debug)]
pub struct FaultFs {
    state: Arc<State>,
}

impl FaultFs {
    /// A filesystem serving `state`.
    pub fn new(state: Arc<State>) -> Self {
        FaultFs { state }
    }

    /// Count the request and run it, surviving a panic (the reply it owned answers EIO as it
    /// is dropped).
    fn serve(&self, op: &'static str, f: impl FnOnce(&State)) {
        self.state.ops.fetch_add(1, Ordering::Relaxed);
        if catch_unwind(AssertUnwindSafe(|| f(&self.state))).is_err() {
            eprintln!("faultfs: {op} panicked; answered EIO");
        }
    }
}

fn entry(reply: ReplyEntry, result: Res<FileAttr>) {
    match result {
        Ok(attr) => reply.entry_with_ttls(&ATTR_TTL, &ENTRY_TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn attr(reply: ReplyAttr, result: Res<FileAttr>) {
    match result {
        Ok(attr) => reply.attr(&ATTR_TTL, &attr),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, result: Res<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn opened(reply: ReplyOpen, result: Res<u64>, flags: FopenFlags) {
    match result {
        Ok(fh) => reply.opened(FileHandle(fh), flags),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.serve("lookup", |s| entry(reply, s.lookup(parent.0, name)));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.serve("forget", |s| s.forget(ino.0, nlookup));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve("getattr", |s| attr(reply, s.getattr(ino.0)));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        self.serve("setattr", |s| attr(reply, s.setattr(ino.0, set)));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve("readlink", |s| match s.readlink(ino.0) {
            Ok(target) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str())),
            Err(e) => reply.error(e),
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.serve("mknod", |s| {
            entry(reply, s.mknod(parent.0, name, mode, rdev))
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.serve("mkdir", |s| entry(reply, s.mkdir(parent.0, name, mode)));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve("unlink", |s| empty(reply, s.unlink(parent.0, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve("rmdir", |s| empty(reply, s.rmdir(parent.0, name)));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.serve("symlink", |s| {
            entry(reply, s.symlink(parent.0, link_name, target))
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.serve("rename", |s| {
            empty(reply, s.rename(parent.0, name, newparent.0, newname, flags))
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.serve("link", |s| {
            entry(reply, s.link(ino.0, newparent.0, newname))
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.serve("open", |s| {
            opened(
                reply,
                s.open_file(ino.0, flags.0),
                FopenFlags::FOPEN_DIRECT_IO,
            )
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.serve("read", |s| match s.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.serve("write", |s| match s.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) does not sync.
        self.serve("flush", |_| reply.ok());
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.serve("release", |s| {
            s.release(fh.0);
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.serve("fsync", |s| empty(reply, s.fsync(fh.0, datasync)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.serve("opendir", |s| {
            opened(reply, s.opendir(ino.0), FopenFlags::empty())
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.serve("readdir", |s| match s.readdir(fh.0, offset) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    let next = offset + i as u64 + 1;
                    if reply.add(INodeNo(e.ino), next, e.kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.serve("releasedir", |s| {
            s.releasedir(fh.0);
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.serve("fsyncdir", |s| empty(reply, s.fsyncdir(fh.0, datasync)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.serve("statfs", |s| match s.statfs() {
            Ok(st) => reply.statfs(
                st.blocks(),
                st.blocks_free(),
                st.blocks_available(),
                st.files(),
                st.files_free(),
                u32::try_from(st.block_size()).unwrap_or(4096),
                u32::try_from(st.name_max()).unwrap_or(255),
                u32::try_from(st.fragment_size()).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.serve("access", |s| empty(reply, s.access(ino.0, mask.bits())));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.serve("create", |s| match s.create(parent.0, name, mode, flags) {
            Ok((attr, fh)) => reply.created(
                &ATTR_TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.serve("fallocate", |s| {
            empty(reply, s.fallocate(fh.0, offset, length, mode))
        });
    }
}
