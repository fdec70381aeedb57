//! Thin helpers over the system calls the filesystem makes on the backing directory: errno
//! conversion, reopening an `O_PATH` descriptor through `/proc/self/fd`, positional reads and
//! writes that loop until done, and turning a `stat` into FUSE attributes.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use nix::fcntl::{AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// What every filesystem operation returns: a value or the errno the kernel passes on.
pub type Res<T> = Result<T, fuser::Errno>;

/// Converting the errors of `nix` and `std` into the errno FUSE answers with.
pub trait OrErrno<T> {
    /// The value, or the error as a FUSE errno (EIO when it carries none).
    fn errno(self) -> Res<T>;
}

impl<T> OrErrno<T> for nix::Result<T> {
    fn errno(self) -> Res<T> {
        self.map_err(|e| fuser::Errno::from_i32(e as i32))
    }
}

impl<T> OrErrno<T> for io::Result<T> {
    fn errno(self) -> Res<T> {
        self.map_err(fuser::Errno::from)
    }
}

/// The path under `/proc/self/fd` that reopens `fd`'s inode (works for `O_PATH` descriptors
/// and for files that have since been unlinked).
pub fn proc_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Open `fd`'s inode again, with real access flags.
pub fn reopen(fd: &impl AsRawFd, flags: OFlag) -> Res<File> {
    let fd: OwnedFd = nix::fcntl::openat(
        AT_FDCWD,
        proc_path(fd).as_str(),
        flags | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .errno()?;
    Ok(File::from(fd))
}

/// `stat` of the inode behind `fd` itself (a symlink is not followed).
pub fn stat_fd(fd: impl AsFd) -> Res<FileStat> {
    nix::sys::stat::fstatat(
        fd,
        "",
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .errno()
}

/// Fill `buf` from `file` at `off`; bytes past the end of the file read as zeros.
pub fn read_full(file: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Write all of `data` to `file` at `off`.
pub fn write_full(file: &File, data: &[u8], off: u64) -> io::Result<()> {
    file.write_all_at(data, off)
}

/// The FUSE file type of a `st_mode`.
pub fn file_type(mode: u32) -> FileType {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => FileType::Directory,
        SFlag::S_IFLNK => FileType::Symlink,
        SFlag::S_IFIFO => FileType::NamedPipe,
        SFlag::S_IFSOCK => FileType::Socket,
        SFlag::S_IFCHR => FileType::CharDevice,
        SFlag::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// A `(seconds, nanoseconds)` timestamp as a `SystemTime`.
pub fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsecs.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

/// FUSE attributes of a backing `stat`, shown under inode number `ino`.
pub fn attr(ino: u64, st: &FileStat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size.max(0) as u64,
        blocks: st.st_blocks.max(0) as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize.clamp(512, 1 << 20) as u32,
        flags: 0,
    }
}

/// The identity of a backing inode: `(st_dev, st_ino)`.
pub fn key(st: &FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}
