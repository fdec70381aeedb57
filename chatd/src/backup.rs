//! The server half of `chatctl backup`: the admin service's `Backup` stream. A checkpoint of
//! the node's database (see `chat_log::backup`) is read out file by file in 1 MiB chunks on a
//! blocking thread, each file's SHA-256 computed on the way, and the manifest sent last; the
//! checkpoint is deleted when the stream ends, finished or dropped by the client.

use std::io::Read;
use std::sync::Arc;

use chat_log::LogNode;
use chat_proto::admin::backup_chunk::Part;
use chat_proto::admin::{BackupChunk, BackupFile, BackupFileSum, BackupManifest, BackupStart};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

const CHUNK_BYTES: usize = 1024 * 1024;

pub type BackupStream = ReceiverStream<Result<BackupChunk, Status>>;

/// Take a checkpoint of `node` and stream it.
pub fn stream(node: Arc<LogNode>) -> BackupStream {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        if let Err(status) = send_backup(&node, &tx) {
            let _ = tx.blocking_send(Err(status));
        }
    });
    ReceiverStream::new(rx)
}

fn send_backup(
    node: &LogNode,
    tx: &mpsc::Sender<Result<BackupChunk, Status>>,
) -> Result<(), Status> {
    let started = std::time::Instant::now();
    let taken_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let (checkpoint, info) = node
        .checkpoint()
        .map_err(|e| Status::internal(format!("take a checkpoint: {e}")))?;
    let send = |part: Part| {
        tx.blocking_send(Ok(BackupChunk { part: Some(part) }))
            .map_err(|_| Status::cancelled("the client went away"))
    };
    let total_bytes = checkpoint.files.iter().map(|(_, size)| size).sum();
    send(Part::Start(BackupStart {
        files: checkpoint.files.len() as u32,
        total_bytes,
    }))?;
    let mut sums = Vec::new();
    for (name, _) in &checkpoint.files {
        let path = checkpoint.dir.join(name);
        let read_error =
            |e: std::io::Error| Status::internal(format!("read {}: {e}", path.display()));
        let mut file = std::fs::File::open(&path).map_err(read_error)?;
        // The size as read now: the live files of a checkpoint are copies, not growing.
        let size = file.metadata().map_err(read_error)?.len();
        send(Part::File(BackupFile {
            path: name.clone(),
            size,
        }))?;
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = file.read(&mut buf).map_err(read_error)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            sent += n as u64;
            send(Part::Data(buf[..n].to_vec()))?;
        }
        if sent != size {
            return Err(Status::internal(format!(
                "{} changed size while read ({size} then {sent} bytes)",
                path.display()
            )));
        }
        sums.push(BackupFileSum {
            path: name.clone(),
            size,
            sha256: hasher.finalize().to_vec(),
        });
    }
    send(Part::Manifest(BackupManifest {
        node_id: info.node_id,
        partitions: info.partitions,
        data_format: info.data_format,
        taken_at_ms,
        cluster_nodes: info.cluster_nodes,
        files: sums,
    }))?;
    tracing::info!(files = checkpoint.files.len(), bytes = total_bytes, took = ?started.elapsed(), "backup streamed");
    Ok(())
}
