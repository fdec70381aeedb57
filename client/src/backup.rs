//! `chatctl backup` and `chatctl restore`: a node's database streamed into a backup directory,
//! and a data dir built from one.
//!
//! A backup directory holds `db/` (the RocksDB checkpoint's files, as the node streamed them)
//! and `MANIFEST.json` (the node, its partition count, data format, when the checkpoint was
//! taken, and every file's size and SHA-256). The manifest is written last, so a directory
//! without one is an unfinished backup. A restore checks every file against the manifest before
//! it copies anything, and marks the new data dir as restored (see `chat_log::backup`: such a
//! node runs only as the single node of its cluster).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chat_proto::admin::backup_chunk::Part;
use chat_proto::admin::BackupChunk;
use chat_proto::protocol::RESTORED_MARKER;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST_FILE: &str = "MANIFEST.json";
const DB_DIR: &str = "db";

/// `MANIFEST.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub node_id: u64,
    pub partitions: u32,
    pub data_format: u32,
    /// RFC 3339, for people; `taken_at_ms` for programs.
    pub taken_at: String,
    pub taken_at_ms: u64,
    /// Nodes in the partition map when the backup was taken.
    pub cluster_nodes: u32,
    pub files: Vec<FileSum>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileSum {
    pub path: String,
    pub size: u64,
    /// Hex.
    pub sha256: String,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A name the node sent must be a plain file name: nothing it sends writes outside `db/`.
fn plain_name(name: &str) -> anyhow::Result<&str> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\');
    if !ok {
        bail!("the node sent a file name that is not a plain name: {name:?}");
    }
    Ok(name)
}

/// Receive a backup from `chunks` into `out` (which must not exist or be empty); `progress`
/// is told the total bytes once, then each chunk's size.
pub async fn receive(
    mut chunks: tonic::Streaming<BackupChunk>,
    out: &Path,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Manifest> {
    check_empty(out)?;
    let db = out.join(DB_DIR);
    std::fs::create_dir_all(&db).with_context(|| format!("create {}", db.display()))?;
    let mut current: Option<(String, std::fs::File, Sha256, u64)> = None;
    let mut sums = Vec::new();
    let finish = |current: &mut Option<(String, std::fs::File, Sha256, u64)>,
                  sums: &mut Vec<FileSum>|
     -> anyhow::Result<()> {
        if let Some((name, mut file, hasher, size)) = current.take() {
            file.flush()?;
            file.sync_all()?;
            sums.push(FileSum {
                path: name,
                size,
                sha256: hex::encode(hasher.finalize()),
            });
        }
        Ok(())
    };
    while let Some(chunk) = chunks.message().await.context("the backup stream")? {
        match chunk.part {
            Some(Part::Start(start)) => progress(Progress::Total(start.total_bytes)),
            Some(Part::File(f)) => {
                finish(&mut current, &mut sums)?;
                let name = plain_name(&f.path)?.to_string();
                let path = db.join(&name);
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("create {}", path.display()))?;
                current = Some((name, file, Sha256::new(), 0));
            }
            Some(Part::Data(bytes)) => {
                let Some((name, file, hasher, size)) = current.as_mut() else {
                    bail!("the node sent file data before naming a file");
                };
                file.write_all(&bytes)
                    .with_context(|| format!("write {name}"))?;
                hasher.update(&bytes);
                *size += bytes.len() as u64;
                progress(Progress::Bytes(bytes.len() as u64));
            }
            Some(Part::Manifest(m)) => {
                finish(&mut current, &mut sums)?;
                let sent: Vec<FileSum> = m
                    .files
                    .iter()
                    .map(|f| FileSum {
                        path: f.path.clone(),
                        size: f.size,
                        sha256: hex::encode(&f.sha256),
                    })
                    .collect();
                if sent != sums {
                    bail!("the backup received does not match the node's manifest (files, sizes or SHA-256 differ): it was damaged on the way; take it again");
                }
                let manifest = Manifest {
                    node_id: m.node_id,
                    partitions: m.partitions,
                    data_format: m.data_format,
                    taken_at: humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.taken_at_ms),
                    )
                    .to_string(),
                    taken_at_ms: m.taken_at_ms,
                    cluster_nodes: m.cluster_nodes,
                    files: sums,
                };
                write_manifest(out, &manifest)?;
                return Ok(manifest);
            }
            None => bail!("the node sent an empty backup chunk"),
        }
    }
    bail!(
        "the backup stream ended before its manifest: the backup in {} is incomplete",
        out.display()
    )
}

/// What a backup or restore has done so far.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    Total(u64),
    Bytes(u64),
}

fn write_manifest(out: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let path = out.join(MANIFEST_FILE);
    let tmp = out.join(format!("{MANIFEST_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(serde_json::to_string_pretty(manifest)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Read and check a backup directory's manifest.
pub fn read_manifest(backup: &Path) -> anyhow::Result<Manifest> {
    let path = backup.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read {} (a backup directory without one is unfinished or not a backup)",
            path.display()
        )
    })?;
    let manifest: Manifest =
        serde_json::from_str(&text).with_context(|| format!("decode {}", path.display()))?;
    for f in &manifest.files {
        plain_name(&f.path)?;
    }
    Ok(manifest)
}

/// Build a data dir at `data_dir` (which must not exist or be empty) from the backup at
/// `backup`: every file checked against the manifest first, then copied, then the restored
/// marker written. `progress` counts bytes checked and then copied (twice the total).
pub fn restore(
    backup: &Path,
    data_dir: &Path,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Manifest> {
    let manifest = read_manifest(backup)?;
    check_empty(data_dir)?;
    progress(Progress::Total(2 * manifest.total_bytes()));
    let from = backup.join(DB_DIR);
    for f in &manifest.files {
        let path = from.join(&f.path);
        let (size, sha256) = sum_file(&path, &mut progress)?;
        if size != f.size || sha256 != f.sha256 {
            bail!(
                "{} does not match the backup's manifest ({size} bytes, SHA-256 {sha256}; the \
                 manifest says {} bytes, {}): the backup is damaged, nothing was restored",
                path.display(),
                f.size,
                f.sha256
            );
        }
    }
    let to = data_dir.join(DB_DIR);
    std::fs::create_dir_all(&to).with_context(|| format!("create {}", to.display()))?;
    for f in &manifest.files {
        let (src, dst) = (from.join(&f.path), to.join(&f.path));
        std::fs::copy(&src, &dst)
            .with_context(|| format!("copy {} to {}", src.display(), dst.display()))?;
        std::fs::File::open(&dst)?.sync_all()?;
        progress(Progress::Bytes(f.size));
    }
    let marker = data_dir.join(RESTORED_MARKER);
    std::fs::write(&marker, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("write {}", marker.display()))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(manifest)
}

fn sum_file(path: &PathBuf, progress: &mut impl FnMut(Progress)) -> anyhow::Result<(u64, String)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        progress(Progress::Bytes(n as u64));
    }
    Ok((size, hex::encode(hasher.finalize())))
}

fn check_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("{} is not empty: give a new directory", dir.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("read {}", dir.display())),
    }
}
