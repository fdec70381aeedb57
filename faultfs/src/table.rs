//! The inode table and the open-file table.
//!
//! Inodes are keyed by the identity of the backing inode (`st_dev`, `st_ino`), not by path, so
//! renames and hard links need no bookkeeping: a renamed file keeps its node, and with it its
//! dirty data. Each node holds an `O_PATH` descriptor of its backing inode (operations use
//! `*at` calls on it, or reopen it through `/proc/self/fd`); holding it also keeps the backing
//! inode number from being reused while the node lives. FUSE inode numbers are our own counter
//! (the root is 1) and are never reused.
//!
//! A node lives while the kernel holds lookups on it, while it is open, or while it has unsynced
//! data (a file closed and forgotten by the kernel still has its "page cache").

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fuser::FileType;

use crate::dirty::Dirty;
use crate::sys::Res;

/// Identity of a backing inode: `(st_dev, st_ino)`.
pub type Key = (u64, u64);

/// The FUSE inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// Lock a mutex, carrying on after a panic elsewhere poisoned it (the data is still
/// consistent: every critical section leaves it so before anything can panic).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One backing inode the kernel knows about (or that still has unsynced data).
#[derive(Debug)]
pub struct Node {
    /// Our inode number.
    pub ino: u64,
    /// The backing inode's identity.
    pub key: Key,
    /// File type (fixed for an inode's life).
    pub kind: FileType,
    /// An `O_PATH` descriptor of the backing inode (`O_RDONLY` for the root directory).
    pub fd: OwnedFd,
    /// Unsynced changes of a regular file; `None` when it matches the backing file.
    pub data: Mutex<Option<Dirty>>,
    /// Open handles on this node.
    pub open: AtomicU64,
}

impl Node {
    /// The unsynced state, locked.
    pub fn data(&self) -> MutexGuard<'_, Option<Dirty>> {
        lock(&self.data)
    }

    /// Whether the node holds changes not yet in the backing file.
    pub fn is_dirty(&self) -> bool {
        self.data().is_some()
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst) > 0
    }
}

#[derive(Debug)]
struct Entry {
    node: Arc<Node>,
    lookups: u64,
}

/// All live nodes, by our inode number and by backing identity.
#[derive(Debug)]
pub struct Table {
    by_ino: HashMap<u64, Entry>,
    by_key: HashMap<Key, u64>,
    next_ino: u64,
}

impl Table {
    /// A table holding just the root directory.
    pub fn new(root_fd: OwnedFd, root_key: Key) -> Self {
        let mut table = Table {
            by_ino: HashMap::new(),
            by_key: HashMap::new(),
            next_ino: ROOT_INO,
        };
        table.insert(root_key, FileType::Directory, root_fd);
        table
    }

    fn insert(&mut self, key: Key, kind: FileType, fd: OwnedFd) -> Arc<Node> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = Arc::new(Node {
            ino,
            key,
            kind,
            fd,
            data: Mutex::new(None),
            open: AtomicU64::new(0),
        });
        self.by_key.insert(key, ino);
        self.by_ino.insert(
            ino,
            Entry {
                node: node.clone(),
                lookups: 0,
            },
        );
        node
    }

    /// The node with our inode number `ino`.
    pub fn get(&self, ino: u64) -> Res<Arc<Node>> {
        self.by_ino
            .get(&ino)
            .map(|e| e.node.clone())
            .ok_or(fuser::Errno::ENOENT)
    }

    /// The node of a backing inode, if it is live.
    pub fn by_key(&self, key: Key) -> Option<Arc<Node>> {
        let ino = self.by_key.get(&key)?;
        self.by_ino.get(ino).map(|e| e.node.clone())
    }

    /// Count one kernel lookup of the backing inode `key`, making its node (with the
    /// descriptor `open_fd` gives) if it has none.
    pub fn remember(
        &mut self,
        key: Key,
        kind: FileType,
        open_fd: impl FnOnce() -> Res<OwnedFd>,
    ) -> Res<Arc<Node>> {
        let node = match self.by_key(key) {
            Some(node) => node,
            None => self.insert(key, kind, open_fd()?),
        };
        if let Some(entry) = self.by_ino.get_mut(&node.ino) {
            entry.lookups += 1;
        }
        Ok(node)
    }

    /// The kernel dropped `n` lookups of `ino`. Returns the node if nothing references it any
    /// more but it was kept for its unsynced data (the caller decides whether that data can go).
    pub fn forget(&mut self, ino: u64, n: u64) -> Option<Arc<Node>> {
        let entry = self.by_ino.get_mut(&ino)?;
        entry.lookups = entry.lookups.saturating_sub(n);
        let node = entry.node.clone();
        if self.remove_if_unused(&node) {
            None
        } else if entry_unreferenced(self.by_ino.get(&ino)) {
            Some(node)
        } else {
            None
        }
    }

    /// Drop `node` from the table if the kernel no longer knows it, it is not open and it has
    /// no unsynced data. Returns whether it was dropped.
    pub fn remove_if_unused(&mut self, node: &Node) -> bool {
        if node.ino == ROOT_INO
            || !entry_unreferenced(self.by_ino.get(&node.ino))
            || node.is_dirty()
        {
            return false;
        }
        self.by_ino.remove(&node.ino);
        self.by_key.remove(&node.key);
        true
    }

    /// Drop every node that is unreferenced and clean (after a power loss or a writeback).
    pub fn sweep(&mut self) {
        for node in self.nodes() {
            self.remove_if_unused(&node);
        }
    }

    /// Every live node.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.by_ino.values().map(|e| e.node.clone()).collect()
    }

    /// How many nodes are live.
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// Whether only the root is left (never true in practice; for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }
}

fn entry_unreferenced(entry: Option<&Entry>) -> bool {
    entry.is_some_and(|e| e.lookups == 0 && !e.node.is_open())
}

/// An open regular file.
#[derive(Debug)]
pub struct OpenFile {
    /// The file's node.
    pub node: Arc<Node>,
    /// The backing file, opened with the caller's access mode.
    pub file: File,
    /// Whether `file` can be written (else a sync reopens the inode for writing).
    pub writable: bool,
    /// Opened with `O_APPEND`: every write goes to the current end.
    pub append: bool,
    /// Opened with `O_SYNC` or `O_DSYNC`: every write is synced before it returns.
    pub sync: bool,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Inode number shown (ours if the entry is live, else the backing one).
    pub ino: u64,
    /// File type.
    pub kind: FileType,
    /// Name in the directory.
    pub name: OsString,
}

/// An open directory.
#[derive(Debug)]
pub struct OpenDir {
    /// The directory's node.
    pub node: Arc<Node>,
    /// The backing directory, opened read-only (for `fsyncdir`).
    pub file: File,
    /// The listing read at offset 0, served to the following `readdir` calls.
    pub listing: Mutex<Vec<Listed>>,
}

/// What a FUSE file handle refers to.
#[derive(Debug, Clone)]
pub enum Handle {
    /// A regular file.
    File(Arc<OpenFile>),
    /// A directory.
    Dir(Arc<OpenDir>),
}

impl Handle {
    fn node(&self) -> &Arc<Node> {
        match self {
            Handle::File(f) => &f.node,
            Handle::Dir(d) => &d.node,
        }
    }
}

/// Open handles by FUSE file handle number.
#[derive(Debug, Default)]
pub struct Handles {
    map: Mutex<HashMap<u64, Handle>>,
    next: AtomicU64,
}

impl Handles {
    /// Register a handle (counting it as open on its node); returns its number.
    pub fn insert(&self, handle: Handle) -> u64 {
        handle.node().open.fetch_add(1, Ordering::SeqCst);
        let fh = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.map).insert(fh, handle);
        fh
    }

    /// The handle numbered `fh`.
    pub fn get(&self, fh: u64) -> Res<Handle> {
        lock(&self.map).get(&fh).cloned().ok_or(fuser::Errno::EBADF)
    }

    /// The open regular file numbered `fh`.
    pub fn file(&self, fh: u64) -> Res<Arc<OpenFile>> {
        match self.get(fh)? {
            Handle::File(f) => Ok(f),
            Handle::Dir(_) => Err(fuser::Errno::EISDIR),
        }
    }

    /// The open directory numbered `fh`.
    pub fn dir(&self, fh: u64) -> Res<Arc<OpenDir>> {
        match self.get(fh)? {
            Handle::Dir(d) => Ok(d),
            Handle::File(_) => Err(fuser::Errno::ENOTDIR),
        }
    }

    /// Unregister `fh`; returns the node it was open on.
    pub fn remove(&self, fh: u64) -> Option<Arc<Node>> {
        let handle = lock(&self.map).remove(&fh)?;
        let node = handle.node().clone();
        node.open.fetch_sub(1, Ordering::SeqCst);
        Some(node)
    }

    /// How many handles are open.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no handle is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
