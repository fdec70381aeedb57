//! Integration tests: each mounts a real faultfs over a temporary directory (root and /dev/fuse
//! required) and checks the semantics through ordinary file I/O on the mount: what survives a
//! power loss, injected failures, bit flips, renames of unsynced files, a RocksDB-like sequence
//! of operations, the control socket's robustness, and a clean shutdown.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::process::Command;

use common::{clean_exit, errno, field, pattern, Mount};

#[test]
fn power_loss_keeps_exactly_the_synced_bytes() {
    let m = Mount::start();
    // a: synced, then more appended without a sync.
    let mut a = File::create(m.path("a")).unwrap();
    a.write_all(b"synced-a").unwrap();
    a.sync_all().unwrap();
    a.write_all(b"+unsynced").unwrap();
    drop(a);
    // b: written, never synced.
    fs::write(m.path("b"), vec![7u8; 10_000]).unwrap();
    // c: 100 synced bytes, then truncated to 3 and one byte written at 50.
    let c = File::create(m.path("c")).unwrap();
    c.write_all_at(&pattern(100, 1), 0).unwrap();
    c.sync_data().unwrap();
    c.set_len(3).unwrap();
    c.write_all_at(b"Z", 50).unwrap();
    drop(c);
    // d: synced, then overwritten in the middle.
    let d = File::create(m.path("d")).unwrap();
    d.write_all_at(&pattern(8192, 2), 0).unwrap();
    d.sync_all().unwrap();
    d.write_all_at(&[0xAA; 100], 4000).unwrap();
    drop(d);

    // Reads see the unsynced data; the disk holds only the synced.
    assert_eq!(fs::read(m.path("a")).unwrap(), b"synced-a+unsynced");
    assert_eq!(fs::metadata(m.path("b")).unwrap().len(), 10_000);
    assert_eq!(fs::metadata(m.on_disk("b")).unwrap().len(), 0);
    let mut c_now = pattern(3, 1);
    c_now.resize(50, 0);
    c_now.push(b'Z');
    assert_eq!(fs::read(m.path("c")).unwrap(), c_now);
    assert_eq!(fs::read(m.on_disk("c")).unwrap(), pattern(100, 1));
    assert_eq!(
        &fs::read(m.path("d")).unwrap()[4000..4100],
        &[0xAA; 100][..]
    );
    assert_eq!(m.status("dirty_files"), 4);

    let reply = m.ok("power-loss");
    assert_eq!(
        field(&reply, "dropped_bytes"),
        9 + 10_000 + 1 + 100,
        "{reply}"
    );
    assert_eq!(field(&reply, "dropped_files"), 4, "{reply}");

    assert_eq!(fs::read(m.path("a")).unwrap(), b"synced-a");
    assert_eq!(
        fs::metadata(m.path("b")).unwrap().len(),
        0,
        "never synced: empty"
    );
    assert_eq!(fs::read(m.path("c")).unwrap(), pattern(100, 1));
    assert_eq!(fs::read(m.path("d")).unwrap(), pattern(8192, 2));
    assert_eq!(m.status("dirty_files"), 0);
    assert_eq!(m.status("dirty_bytes"), 0);

    // The mount goes on working.
    fs::write(m.path("a"), b"after").unwrap();
    File::open(m.path("a")).unwrap().sync_all().unwrap();
    m.ok("power-loss");
    assert_eq!(fs::read(m.path("a")).unwrap(), b"after");
}

#[test]
fn failed_fsync_keeps_data_and_failed_writes_store_nothing() {
    let m = Mount::start();
    let mut f = File::create(m.path("f")).unwrap();
    f.write_all(b"precious").unwrap();

    m.ok("fail fsync eio");
    assert_eq!(errno(&f.sync_all().unwrap_err()), libc::EIO);
    assert_eq!(errno(&f.sync_data().unwrap_err()), libc::EIO);
    let dir = File::open(&m.mnt).unwrap();
    assert_eq!(errno(&dir.sync_all().unwrap_err()), libc::EIO, "fsyncdir");
    assert_eq!(
        fs::read(m.path("f")).unwrap(),
        b"precious",
        "still readable"
    );
    assert_eq!(fs::metadata(m.on_disk("f")).unwrap().len(), 0);
    assert_eq!(m.status("dirty_bytes"), 8, "still dirty");

    m.ok("fail clear");
    f.sync_all().unwrap();
    dir.sync_all().unwrap();
    assert_eq!(fs::read(m.on_disk("f")).unwrap(), b"precious");
    m.ok("power-loss");
    assert_eq!(fs::read(m.path("f")).unwrap(), b"precious");

    m.ok("fail fsync enospc");
    f.write_all(b"!").unwrap();
    assert_eq!(errno(&f.sync_all().unwrap_err()), libc::ENOSPC);
    m.ok("fail fsync off");
    f.sync_all().unwrap();
    assert_eq!(fs::read(m.on_disk("f")).unwrap(), b"precious!");

    m.ok("fail write enospc");
    assert_eq!(errno(&f.write_all(b"more").unwrap_err()), libc::ENOSPC);
    m.ok("fail write eio");
    assert_eq!(errno(&f.write_all(b"more").unwrap_err()), libc::EIO);
    assert_eq!(
        fs::read(m.path("f")).unwrap(),
        b"precious!",
        "nothing stored"
    );
    assert_eq!(m.status("dirty_files"), 0);
    let status = m.ok("status");
    assert!(
        status.contains("fail_write=eio fail_fsync=none"),
        "{status}"
    );

    m.ok("fail clear");
    f.write_all(b"more").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"precious!more");
}

#[test]
fn flip_changes_exactly_one_bit() {
    let m = Mount::start();
    let original = pattern(4096, 3);
    let f = File::create(m.path("f")).unwrap();
    f.write_all_at(&original, 0).unwrap();
    f.sync_all().unwrap();

    let reply = m.ok("flip f 1000 5");
    assert!(reply.contains("on_disk=true unsynced=false"), "{reply}");
    let now = fs::read(m.path("f")).unwrap();
    assert_eq!(differing_bits(&original, &now), 1);
    assert_eq!(now[1000], original[1000] ^ 0x20);
    assert_eq!(fs::read(m.on_disk("f")).unwrap(), now, "on disk too");

    // Over unsynced data the flip shows at once and survives the next fsync.
    f.write_all_at(b"abc", 2000).unwrap();
    let reply = m.ok("flip f 2001 0");
    assert!(reply.contains("unsynced=true"), "{reply}");
    let mut expected = now.clone();
    expected[2000..2003].copy_from_slice(&[b'a', b'b' ^ 1, b'c']);
    assert_eq!(fs::read(m.path("f")).unwrap(), expected);
    f.sync_all().unwrap();
    assert_eq!(fs::read(m.on_disk("f")).unwrap(), expected);

    for bad in [
        "flip f 4096 0",
        "flip f 0 8",
        "flip nosuch 0 0",
        "flip ../f 0 0",
        "flip /etc/passwd 0 0",
        "flip . 0 0",
    ] {
        assert!(m.ctl(bad).starts_with("err "), "{bad:?} should fail");
    }
    assert_eq!(
        fs::read(m.path("f")).unwrap(),
        expected,
        "failed flips change nothing"
    );
}

fn differing_bits(a: &[u8], b: &[u8]) -> u32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

#[test]
fn rename_keeps_unsynced_data_under_the_new_name() {
    let m = Mount::start();
    fs::write(m.path("x.tmp"), b"abc").unwrap();
    fs::rename(m.path("x.tmp"), m.path("x")).unwrap();
    assert_eq!(fs::read(m.path("x")).unwrap(), b"abc");
    assert_eq!(fs::metadata(m.on_disk("x")).unwrap().len(), 0);
    let dirty = m.ok("dirty");
    assert!(dirty.contains("1 files: x (3 unsynced bytes"), "{dirty}");

    File::open(m.path("x")).unwrap().sync_all().unwrap();
    assert_eq!(fs::read(m.on_disk("x")).unwrap(), b"abc");
    assert_eq!(field(&m.ok("power-loss"), "dropped_bytes"), 0);
    assert_eq!(fs::read(m.path("x")).unwrap(), b"abc");

    // Replacing a synced file by rename without syncing the new one first: after a power
    // loss the name points at an empty file (the bug this filesystem exists to expose).
    fs::write(m.path("y"), b"old").unwrap();
    File::open(m.path("y")).unwrap().sync_all().unwrap();
    fs::write(m.path("y.tmp"), b"new").unwrap();
    fs::rename(m.path("y.tmp"), m.path("y")).unwrap();
    assert_eq!(fs::read(m.path("y")).unwrap(), b"new");
    m.ok("power-loss");
    assert_eq!(fs::read(m.path("y")).unwrap(), b"");
    assert!(!m.path("y.tmp").exists());

    // Directories move with their files' unsynced data.
    fs::create_dir(m.path("d1")).unwrap();
    fs::write(m.path("d1/f"), b"inside").unwrap();
    fs::rename(m.path("d1"), m.path("d2")).unwrap();
    assert_eq!(fs::read(m.path("d2/f")).unwrap(), b"inside");
    File::open(m.path("d2/f")).unwrap().sync_all().unwrap();
    assert_eq!(fs::read(m.on_disk("d2/f")).unwrap(), b"inside");

    // renameat2 flags: NOREPLACE refuses an existing target; WHITEOUT is not supported.
    fs::write(m.path("z"), b"z").unwrap();
    assert_eq!(
        renameat2(&m, "x", "z", libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(renameat2(&m, "x", "w", libc::RENAME_NOREPLACE), 0);
    assert_eq!(renameat2(&m, "w", "z", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.path("z")).unwrap(), b"abc");
    assert_eq!(fs::read(m.path("w")).unwrap(), b"z");
    assert_eq!(renameat2(&m, "w", "v", libc::RENAME_WHITEOUT), libc::EINVAL);
}

/// `renameat2` inside the mount; 0 or the errno.
fn renameat2(m: &Mount, from: &str, to: &str, flags: libc::c_uint) -> i32 {
    let from = std::ffi::CString::new(m.path(from).as_os_str().as_bytes()).unwrap();
    let to = std::ffi::CString::new(m.path(to).as_os_str().as_bytes()).unwrap();
    // SAFETY: two valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        0
    } else {
        errno(&std::io::Error::last_os_error())
    }
}

/// `fallocate(2)` on an open file; 0 or the errno.
fn fallocate(f: &File, mode: i32, off: i64, len: i64) -> i32 {
    // SAFETY: a valid descriptor.
    if unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) } == 0 {
        0
    } else {
        errno(&std::io::Error::last_os_error())
    }
}

#[test]
fn rocksdb_like_sequence_survives_a_power_loss() {
    let m = Mount::start();
    fs::create_dir(m.path("db")).unwrap();

    // WAL: preallocated, appended, each record fdatasync'ed but the last.
    let mut wal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(m.path("db/000003.log"))
        .unwrap();
    assert_eq!(fallocate(&wal, libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20), 0);
    assert_eq!(
        wal.metadata().unwrap().len(),
        0,
        "KEEP_SIZE keeps the length"
    );
    assert!(
        fs::metadata(m.on_disk("db/000003.log")).unwrap().blocks() > 0,
        "reserved"
    );
    wal.write_all(b"record-1;").unwrap();
    wal.sync_data().unwrap();
    wal.write_all(b"record-2;").unwrap();
    wal.sync_data().unwrap();
    wal.write_all(b"record-3;").unwrap();
    let mut reader = File::open(m.path("db/000003.log")).unwrap();
    assert_eq!(
        reader.seek(SeekFrom::End(0)).unwrap(),
        27,
        "SEEK_END sees the pending size"
    );

    // An SST: created exclusively, written, synced.
    let sst = pattern(65_536, 4);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("db/000010.sst"))
        .unwrap();
    f.write_all(&sst).unwrap();
    f.sync_all().unwrap();
    let again = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("db/000010.sst"));
    assert_eq!(errno(&again.unwrap_err()), libc::EEXIST);

    // MANIFEST, then CURRENT through a synced temp file, a rename and a directory fsync.
    write_synced(&m, "db/MANIFEST-000005", b"manifest-v1");
    write_synced(&m, "db/000005.dbtmp", b"MANIFEST-000005\n");
    fs::rename(m.path("db/000005.dbtmp"), m.path("db/CURRENT")).unwrap();
    File::open(m.path("db")).unwrap().sync_all().unwrap();

    // A checkpoint by hard link: the same inode under two names.
    fs::create_dir(m.path("checkpoint")).unwrap();
    fs::hard_link(m.path("db/000010.sst"), m.path("checkpoint/000010.sst")).unwrap();
    let (one, two) = (
        fs::metadata(m.path("db/000010.sst")).unwrap(),
        fs::metadata(m.path("checkpoint/000010.sst")).unwrap(),
    );
    assert_eq!((one.ino(), one.nlink()), (two.ino(), 2));

    // A ballast made with fallocate mode 0, synced.
    let ballast = File::create(m.path("BALLAST")).unwrap();
    assert_eq!(fallocate(&ballast, 0, 0, 8192), 0);
    assert_eq!(ballast.metadata().unwrap().len(), 8192);
    ballast.sync_all().unwrap();
    assert_eq!(fs::metadata(m.on_disk("BALLAST")).unwrap().len(), 8192);
    assert_eq!(
        fallocate(
            &ballast,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            10
        ),
        libc::EOPNOTSUPP
    );

    // An obsolete WAL with unsynced data is deleted: its data goes with it.
    fs::write(m.path("db/000001.log"), b"junk").unwrap();
    let before = m.status("dirty_files");
    fs::remove_file(m.path("db/000001.log")).unwrap();
    assert_eq!(m.status("dirty_files"), before - 1);

    // O_TRUNC of a synced file is a pending truncate.
    let mut t = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("db/MANIFEST-000005"))
        .unwrap();
    t.write_all(b"x").unwrap();
    drop(t);
    assert_eq!(fs::read(m.path("db/MANIFEST-000005")).unwrap(), b"x");

    let mut names: Vec<String> = fs::read_dir(m.path("db"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["000003.log", "000010.sst", "CURRENT", "MANIFEST-000005"]
    );
    let vfs = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
    assert!(vfs.blocks() > 0 && vfs.block_size() > 0);

    drop((wal, f, ballast, reader));
    m.ok("power-loss");

    let wal_now = fs::read(m.path("db/000003.log")).unwrap();
    assert_eq!(wal_now, b"record-1;record-2;", "exactly the synced records");
    assert_eq!(fs::read(m.path("db/000010.sst")).unwrap(), sst);
    assert_eq!(fs::read(m.path("checkpoint/000010.sst")).unwrap(), sst);
    assert_eq!(
        fs::read(m.path("db/CURRENT")).unwrap(),
        b"MANIFEST-000005\n"
    );
    assert_eq!(
        fs::read(m.path("db/MANIFEST-000005")).unwrap(),
        b"manifest-v1"
    );
    assert_eq!(fs::metadata(m.path("BALLAST")).unwrap().len(), 8192);
    assert!(!m.path("db/000001.log").exists());
}

fn write_synced(m: &Mount, rel: &str, data: &[u8]) {
    let mut f = File::create(m.path(rel)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn concurrent_writers_and_syncs() {
    let m = Mount::start();
    std::thread::scope(|scope| {
        for t in 0..4u8 {
            let m = &m;
            scope.spawn(move || {
                let mut f = File::create(m.path(&format!("t{t}"))).unwrap();
                for i in 0..200 {
                    f.write_all(&pattern(1000, t.wrapping_add(i as u8)))
                        .unwrap();
                    if i % 10 == 9 {
                        f.sync_data().unwrap();
                    }
                }
            });
        }
    });
    m.ok("power-loss");
    for t in 0..4u8 {
        let data = fs::read(m.path(&format!("t{t}"))).unwrap();
        assert_eq!(data.len(), 200_000, "every write was followed by a sync");
        for (i, chunk) in data.chunks(1000).enumerate() {
            assert_eq!(chunk, pattern(1000, t.wrapping_add(i as u8)));
        }
    }
}

#[test]
fn control_socket_survives_garbage_and_shutdown_writes_back() {
    let mut m = Mount::start();
    for bad in [
        "",
        "bogus",
        "power-loss now",
        "fail",
        "fail write",
        "fail read eio",
        "fail write eagain",
        "flip",
        "flip f",
        "flip f x 0",
    ] {
        assert!(m.ctl(bad).starts_with("err "), "{bad:?} should be refused");
    }
    assert_eq!(
        raw_request(&m, &[b'x'; 10_000]),
        "err command line too long"
    );
    assert_eq!(
        raw_request(&m, b"\xff\xfe status\n"),
        "err command is not UTF-8"
    );
    assert_eq!(m.ctl("ping"), "ok pong");

    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chat-faultfs"))
            .arg("ctl")
            .arg("--control")
            .arg(&m.sock)
            .args(args)
            .output()
            .unwrap()
    };
    let status = cli(&["status"]);
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).starts_with("ok dirty_files=0"));
    let refused = cli(&["fail", "read", "eio"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stdout).starts_with("err "));

    // A clean shutdown writes unsynced data back, as a kernel would at unmount.
    fs::write(m.path("bye"), b"written at exit").unwrap();
    let status = m.stop();
    assert!(clean_exit(status), "exit {status}:\n{}", m.log());
    assert_eq!(fs::read(m.on_disk("bye")).unwrap(), b"written at exit");
    assert!(!m.sock.exists(), "socket removed");
}

/// Send raw bytes to the control socket; the reply line.
fn raw_request(m: &Mount, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(&m.sock).unwrap();
    stream.write_all(bytes).unwrap();
    let mut reply = String::new();
    let mut buf = [0u8; 1];
    while stream.read(&mut buf).unwrap() == 1 && buf[0] != b'\n' {
        reply.push(buf[0] as char);
    }
    reply
}

#[test]
fn odd_requests_get_errors_not_crashes() {
    let m = Mount::start();
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/f"), b"content").unwrap();

    assert_eq!(
        errno(&File::open(m.path("nosuch")).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno(&fs::remove_dir(m.path("dir")).unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(
            &OpenOptions::new()
                .write(true)
                .open(m.path("dir"))
                .unwrap_err()
        ),
        libc::EISDIR
    );
    let xattr = xattr_set(&m.path("dir/f"));
    assert!(
        xattr == libc::EOPNOTSUPP || xattr == libc::ENOSYS,
        "setxattr: {xattr}"
    );

    // Symlinks, fifos, permissions and times pass through.
    std::os::unix::fs::symlink("dir/f", m.path("link")).unwrap();
    assert_eq!(
        fs::read_link(m.path("link")).unwrap().to_str(),
        Some("dir/f")
    );
    assert_eq!(fs::read(m.path("link")).unwrap(), b"content");
    nix::unistd::mkfifo(
        &m.path("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::metadata(m.path("fifo")).unwrap().file_type()
    ));
    fs::set_permissions(
        m.path("dir/f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    assert_eq!(
        fs::metadata(m.on_disk("dir/f")).unwrap().mode() & 0o777,
        0o640
    );
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(m.path("dir/f"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    assert_eq!(
        fs::metadata(m.on_disk("dir/f")).unwrap().mtime(),
        1_000_000_000
    );

    // An unlinked file stays readable (with its unsynced data) while open.
    let open = File::open(m.path("dir/f")).unwrap();
    fs::remove_file(m.path("dir/f")).unwrap();
    let mut content = Vec::new();
    (&open).read_to_end(&mut content).unwrap();
    assert_eq!(content, b"content");
    assert_eq!(m.status("dirty_files"), 1, "still open");
    drop(open);
    assert_eq!(m.status("dirty_files"), 0, "gone with its last handle");
    fs::remove_dir(m.path("dir")).unwrap();
    assert!(m.ok("status").starts_with("ok "), "still serving");
}

/// `setxattr` on a file; its errno (0 on success).
fn xattr_set(path: &std::path::Path) -> i32 {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated name and path, a 1-byte value.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.test".as_ptr(),
            b"x".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc == 0 {
        0
    } else {
        errno(&std::io::Error::last_os_error())
    }
}
